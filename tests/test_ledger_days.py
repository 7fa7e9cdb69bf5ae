"""A day that begins while the process runs starts from what the store holds (R1.2, R1.5).

An orchestrator started before midnight must see, from its first reservation of the
new day on, what other runs already spent that day — on SQLite and on Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from scheduler import Event, Limits, TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.runtime import AgentContext, Orchestrator
from scheduler.store import SqliteStore, Store
from scheduler.tasks import TaskStatus
from scheduler.testing import ScriptedProvider, build_orchestrator

pytestmark = pytest.mark.anyio
SATURDAY = "2026-11-28"


class LoopWallClock:
    """A wall clock that starts at ``start`` and moves with the event loop's clock."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self._t0: float | None = None

    def now(self) -> datetime:
        now = anyio.current_time()
        if self._t0 is None:
            self._t0 = now
        return self.start + timedelta(seconds=now - self._t0)


class CallsWithGaps:
    """A short call, then a gap, six times: no call spans midnight."""

    async def run(self, ctx: AgentContext) -> None:
        for _ in range(6):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                                   model="haiku")
            await anyio.sleep(0.4)


async def _other_runs_saturday(store: Store) -> None:
    """Another run on the same store already spent 900 of Saturday's 1,000 tokens."""
    await store.record(UsageEvent(
        event_id="other-run:1", task_id="elsewhere", session_id="other", day=SATURDAY,
        at=0.0, model="haiku", usage=Usage(800, 100), cost_usd=0.001))


async def _run_across_midnight(orch: Orchestrator) -> tuple[str, str]:
    paused_scope: list[str] = []
    paused = anyio.Event()

    def on_event(event: Event) -> None:
        if event.name == "pause_requested" and not paused_scope:
            paused_scope.append(str(event.data.get("scope")))
        if event.name == "task_paused":
            paused.set()

    orch.bus.subscribe(on_event)

    async def finish_when_paused() -> None:
        await paused.wait()
        await orch.decide("t1", "finish")

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_when_paused)
        report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
        tg.cancel_scope.cancel()  # no pause came (the day was not loaded)
    return (paused_scope or [""])[0], report.outcomes["t1"].status


def _config(state: Path, store: str) -> VibeConfig:
    return VibeConfig(state_dir=state, store=store, session_id="s1",
                      budgets={"day": Limits(tokens=1_000)})


async def test_r1_5_new_day_loads_other_runs_spend_sqlite(tmp_path: Path) -> None:
    """R1.5 on SQLite: after midnight the first reservation sees the 900 tokens another run
    spent on the new day, so the task pauses on the day limit instead of overspending."""
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    await _other_runs_saturday(store)
    await store.aclose()
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 58, tzinfo=UTC))
    orch = build_orchestrator({"a": CallsWithGaps}, config=_config(tmp_path, "sqlite"),
                              provider=ScriptedProvider(latency_s=0.05), wall=wall)
    scope, status = await _run_across_midnight(orch)
    assert status is TaskStatus.FINISHED
    assert scope == f"day:{SATURDAY}"
    check = SqliteStore(tmp_path / "vibe.db")
    await check.open()
    assert (await check.totals(f"day:{SATURDAY}")).tokens == 900  # nothing more that day
    assert (await check.totals("day:2026-11-27")).tokens > 0  # Friday's calls went through
    await check.aclose()


@pytest.mark.redis
@pytest.mark.real_asyncio  # RedisStore runs on asyncio only
async def test_r1_5_new_day_loads_other_runs_spend_redis(tmp_path: Path, redis_ns: str) -> None:
    """R1.5 on Redis: the same, the other run's spend read from the shared store."""
    from scheduler.store._redis import RedisStore
    from tests._redis_helpers import REDIS_URL

    def store() -> RedisStore:
        return RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "spool.jsonl")

    first = store()
    await first.open()
    await _other_runs_saturday(first)
    await first.aclose()
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC))
    redis = store()
    orch = build_orchestrator({"a": CallsWithGaps}, config=_config(tmp_path, "memory"),
                              store=redis, provider=ScriptedProvider(latency_s=0.05),
                              wall=wall)
    scope, status = await _run_across_midnight(orch)
    assert status is TaskStatus.FINISHED
    assert scope == f"day:{SATURDAY}"
    check = store()
    await check.open()
    # 900 before; at most the one call reserved before midnight and charged after it
    assert (await check.totals(f"day:{SATURDAY}")).tokens in (900, 1_050)
    await check.aclose()


class CallAcrossMidnightThenOneMore:
    """A call admitted before midnight that ends after it, then a call on the new day."""

    async def run(self, ctx: AgentContext) -> None:
        for _ in range(2):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                                   model="haiku")
            await anyio.sleep(1)


async def test_r1_2_calls_settling_after_midnight_count_once_toward_the_new_day(
        tmp_path: Path) -> None:
    """R1.2, R1.5 on SQLite: five calls admitted at 23:59:58 end together at 00:00:01, the
    first charges of Saturday; each counts once in the day's totals, so the second round
    (10 calls of 150 tokens in all, within Saturday's 2,000) runs with no pause -- a day
    read from the store after some of those charges were recorded used to add them again
    (1,350 tokens for 750 spent) and paused tasks at the day budget."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"day": Limits(tokens=2_000)})
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 58, tzinfo=UTC))
    orch = build_orchestrator({"a": CallAcrossMidnightThenOneMore}, config=config, wall=wall,
                              provider=ScriptedProvider(latency_s=3))
    pauses: list[str] = []

    def on_event(event: Event) -> None:
        if event.name == "pause_requested":
            pauses.append(str(event.data.get("scope")))

    orch.bus.subscribe(on_event)

    async def finish_paused() -> None:  # a wrong pause ends its task instead of hanging
        while True:
            await anyio.sleep(5)
            for task_id in [t for t in (f"t{i}" for i in range(5))
                            if orch.controller.is_paused(t)]:
                await orch.decide(task_id, "finish")

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_paused)
        report = await orch.run([TaskSpec(id=f"t{i}", agent="a", prompt="x")
                                 for i in range(5)])
        tg.cancel_scope.cancel()
    assert pauses == []
    assert {o.status for o in report.outcomes.values()} == {TaskStatus.COMPLETED}
    check = SqliteStore(tmp_path / "vibe.db")
    await check.open()
    saturday = await check.totals(f"day:{SATURDAY}")
    await check.aclose()
    assert saturday.tokens == 10 * 150
    in_memory = orch.tracker.day_scope(datetime(2026, 11, 28, tzinfo=UTC).date())
    assert in_memory.totals.tokens == saturday.tokens
