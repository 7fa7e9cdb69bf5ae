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
from scheduler.runtime import AgentContext, Orchestrator, RunReport
from scheduler.store import SqliteStore, Store, task_day_scope
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
    # 900 before; a call reserved before midnight counts toward Friday, however late it ends
    assert (await check.totals(f"day:{SATURDAY}")).tokens == 900
    await check.aclose()



async def _finish_paused(orch: Orchestrator, tasks: list[str]) -> None:
    """A wrong pause ends its task instead of hanging the run."""
    while True:
        await anyio.sleep(5)
        for task_id in [t for t in tasks if orch.controller.is_paused(t)]:
            await orch.decide(task_id, "finish")


async def _run_all(orch: Orchestrator, agent: str, n: int, budget: Limits | None = None,
                   day_budget: Limits | None = None) -> tuple[list[str], RunReport]:
    """Run tasks ``t0``..``t<n-1>`` of ``agent``; the scopes of the pauses requested."""
    pauses: list[str] = []
    orch.bus.subscribe(lambda e: pauses.append(str(e.data.get("scope")))
                       if e.name == "pause_requested" else None)
    tasks = [f"t{i}" for i in range(n)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(_finish_paused, orch, tasks)
        report = await orch.run([TaskSpec(id=t, agent=agent, prompt="x", budget=budget,
                                          day_budget=day_budget) for t in tasks])
        tg.cancel_scope.cancel()
    return pauses, report


class TwoEditsAfterMidnight:
    """At 00:00:01 a file edit (every task at once), a second later another."""

    async def run(self, ctx: AgentContext) -> None:
        await anyio.sleep(3)
        for n in range(2):
            await ctx.files.write(f"out{n}.txt", "x")
            await anyio.sleep(1)


async def test_r1_2_first_charges_of_a_day_count_once(tmp_path: Path) -> None:
    """R1.2, R1.5 on SQLite: five file edits at 00:00:01, the first charges of Saturday,
    each count once in the day's totals, so the second five fit Saturday's 11 with no
    pause (10 of 11 is past the critical threshold, not the limit) -- the day's totals
    read from the store after some of those edits were recorded used to add them again
    (9 edits for 5) and paused tasks at the day budget."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"day": Limits(file_edits=11)})
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 58, tzinfo=UTC))
    orch = build_orchestrator({"a": TwoEditsAfterMidnight}, config=config, wall=wall)
    pauses, report = await _run_all(orch, "a", 5)
    assert pauses == []
    assert {o.status for o in report.outcomes.values()} == {TaskStatus.COMPLETED}
    check = SqliteStore(tmp_path / "vibe.db")
    await check.open()
    saturday = await check.totals(f"day:{SATURDAY}")
    await check.aclose()
    assert saturday.file_edits == 10
    in_memory = orch.tracker.day_scope(datetime(2026, 11, 28, tzinfo=UTC).date())
    assert in_memory.totals.file_edits == 10


class SonnetThenHaiku:
    """A sonnet call of about $0.45 admitted at 23:59:50 that ends at 00:00:20, then a
    haiku call of about $0.15."""

    async def run(self, ctx: AgentContext) -> None:
        await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=30_000,
                               model="sonnet")
        await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                               model="haiku")


async def test_r1_3_saturday_starts_from_nothing_after_fridays_calls_end(
        tmp_path: Path) -> None:
    """R1.2, R1.3: fifteen calls Friday's $20 admitted at 23:59:50 end at 00:00:20; they
    count toward Friday, whose budget admitted them, and Saturday's $5 starts from
    nothing: each task's next call fits in it.  Charged to the day they ended, they put
    $6.75 on Saturday before Saturday's budget was ever asked, and every task paused."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"session": Limits()})
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 50, tzinfo=UTC))
    provider = ScriptedProvider(latency_s=30, prompt=100, completion=30_000)
    orch = build_orchestrator({"a": SonnetThenHaiku}, config=config,
                              wall=wall, provider=provider)
    pauses, report = await _run_all(orch, "a", 15, Limits(tokens=100_000, cost_usd=2.0))
    assert pauses == []
    assert {o.status for o in report.outcomes.values()} == {TaskStatus.COMPLETED}
    check = SqliteStore(tmp_path / "vibe.db")
    await check.open()
    friday = await check.totals("day:2026-11-27")
    saturday = await check.totals(f"day:{SATURDAY}")
    await check.aclose()
    assert (friday.calls, saturday.calls) == (15, 15)
    assert friday.tokens_by_model == {"sonnet": 15 * 30_100}
    assert saturday.tokens_by_model == {"haiku": 15 * 30_100}
    assert saturday.cost_usd < 5.0 < friday.cost_usd < 20.0


async def test_r3_4_a_day_exceeded_by_calls_ending_after_it_pauses_nobody(
        tmp_path: Path) -> None:
    """R3.1, R3.4: five calls Friday admitted at 23:59:50 use more than estimated and end
    at 00:00:20 over Friday's 1,000 tokens: the crossing is told (``budget_exceeded`` of
    Friday) but no task pauses for a day that is over -- Saturday's budget applies."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"day": Limits(tokens=1_000)})
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 50, tzinfo=UTC))
    exceeded: list[str] = []
    orch = build_orchestrator({"a": CallsWithGaps}, config=config, wall=wall,
                              provider=ScriptedProvider(latency_s=30, completion=300))
    orch.bus.subscribe(lambda e: exceeded.append(str(e.data.get("scope")))
                       if e.name == "budget_exceeded" else None)
    pauses, _ = await _run_all(orch, "a", 5)
    assert "day:2026-11-27" in exceeded
    assert "day:2026-11-27" not in pauses


class ThreeEditsAfterMidnight:
    async def run(self, ctx: AgentContext) -> None:
        await anyio.sleep(3)
        for n in range(3):
            await ctx.files.write(f"out{n}.txt", "x")


async def test_r1_5_a_new_days_first_file_edit_sees_other_runs_edits(tmp_path: Path) -> None:
    """R1.5, R3.4: other runs already made Saturday's 10 file edits; a task of a run begun
    on Friday pauses at its first edit after midnight, Saturday's total staying at 10 --
    the first edit used to be checked against a new day not read from the store yet."""
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    await store.record(UsageEvent(event_id="other-run:1", task_id="elsewhere",
                                  session_id="other", day=SATURDAY, at=0.0, file_edits=10))
    await store.aclose()
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"day": Limits(file_edits=10)})
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 58, tzinfo=UTC))
    orch = build_orchestrator({"a": ThreeEditsAfterMidnight}, config=config, wall=wall)
    pauses, report = await _run_all(orch, "a", 1)
    assert pauses == [f"day:{SATURDAY}"]
    assert report.outcomes["t0"].status is TaskStatus.FINISHED
    check = SqliteStore(tmp_path / "vibe.db")
    await check.open()
    assert (await check.totals(f"day:{SATURDAY}")).file_edits == 10
    await check.aclose()


async def test_r1_5_a_tasks_new_day_budget_starts_from_other_runs_spend(
        tmp_path: Path) -> None:
    """R1.5: another run already spent 900 of task t0's 1,000 tokens for Saturday
    (``day_budget``); a run begun on Friday pauses t0 at its first call after midnight,
    on ``task-day:t0:SATURDAY``, which stays at 900 -- the call used to be checked against
    the task's new day before it was read from the store, and took it to 1,050."""
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    await store.record(UsageEvent(
        event_id="other-run:1", task_id="t0", session_id="other", day=SATURDAY, at=0.0,
        model="haiku", usage=Usage(800, 100), day_scope="t0"))
    await store.aclose()
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1")
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC))
    orch = build_orchestrator({"a": CallsWithGaps}, config=config, wall=wall,
                              provider=ScriptedProvider(latency_s=0.05))
    pauses, report = await _run_all(orch, "a", 1, day_budget=Limits(tokens=1_000))
    assert pauses == [task_day_scope("t0", SATURDAY)]
    assert report.outcomes["t0"].status is TaskStatus.FINISHED
    check = SqliteStore(tmp_path / "vibe.db")
    await check.open()
    assert (await check.totals(task_day_scope("t0", SATURDAY))).tokens == 900
    await check.aclose()
