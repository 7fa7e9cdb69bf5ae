"""The day never goes backwards (R1.2, R3.4): a wall clock stepped back across midnight
(an NTP correction) does not reopen the day before, for a running process, for a
process restarted on the same store, or for another process of the fleet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Event, Limits, TaskSpec, VibeConfig
from scheduler.core import FixedWallClock
from scheduler.runtime import AgentContext
from scheduler.store import SqliteStore
from scheduler.tasks import TaskStatus
from scheduler.testing import ScriptedProvider, build_orchestrator

pytestmark = pytest.mark.anyio
FRIDAY, SATURDAY = "2026-11-27", "2026-11-28"


class CallsEverySecond:
    calls = 8

    async def run(self, ctx: AgentContext) -> None:
        for _ in range(self.calls):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                                   model="haiku")
            await anyio.sleep(1.0)


class SteppedBackWallClock:
    """Moves with the loop's clock from ``start``; once :attr:`back` is set, it reads that
    much earlier (what an NTP correction does to a clock that ran fast)."""

    def __init__(self, start: datetime) -> None:
        self.start, self.back = start, timedelta(0)
        self._t0: float | None = None

    def now(self) -> datetime:
        now = anyio.current_time()
        if self._t0 is None:
            self._t0 = now
        return self.start + timedelta(seconds=now - self._t0) - self.back


async def test_r3_4_clock_stepped_back_after_midnight_lifts_pause_once(tmp_path: Path) -> None:
    """R3.4, R1.2: a task paused on Friday's day budget resumes at midnight; the wall clock
    is then set back two minutes (to 23:58 Friday).  Saturday stays the day: the task is
    not paused on Friday again nor lifted a second time, and Friday gets no more use."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"day": Limits(tokens=1_000)})
    wall = SteppedBackWallClock(datetime(2026, 11, 27, 23, 50, tzinfo=UTC))
    orch = build_orchestrator({"a": CallsEverySecond}, config=config, wall=wall,
                              provider=ScriptedProvider(latency_s=0.05))
    events: list[Event] = []
    orch.bus.subscribe(events.append)

    def step_back_after_lift(event: Event) -> None:
        if event.name == "pause_lifted":  # a few seconds after midnight
            wall.back = timedelta(minutes=2)

    orch.bus.subscribe(step_back_after_lift)

    with anyio.fail_after(7200):  # virtual
        report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status is TaskStatus.COMPLETED
    names = [e.name for e in events]
    assert names.count("pause_lifted") == 1, names
    assert names.count("task_paused") == 1, names
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    friday = await store.totals(f"day:{FRIDAY}")
    saturday = await store.totals(f"day:{SATURDAY}")
    await store.aclose()
    assert friday.tokens <= 1_000
    assert friday.calls + saturday.calls == 8
    history = sorted((await _history(tmp_path / "vibe.db")).values(), key=lambda r: r["seq"])
    names = [r["name"] for r in history]
    after_lift = history[names.index("pause_lifted"):]
    assert {r["day"] for r in after_lift} == {SATURDAY}  # report's history by day agrees


async def _history(db: Path) -> dict[str, dict[str, Any]]:
    store = SqliteStore(db)
    await store.open()
    try:
        return await store.list_state("history")
    finally:
        await store.aclose()


class TwoCalls(CallsEverySecond):
    calls = 2


def _config(tmp_path: Path, session: str, day_tokens: int = 1_000) -> VibeConfig:
    """Each process its state directory, one SQLite file for the fleet."""
    return VibeConfig(state_dir=tmp_path / session, store=f"sqlite:///{tmp_path / 'vibe.db'}",
                      session_id=session, budgets={"day": Limits(tokens=day_tokens)})


async def _day_totals(tmp_path: Path) -> tuple[int, int]:
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    friday = await store.totals(f"day:{FRIDAY}")
    saturday = await store.totals(f"day:{SATURDAY}")
    await store.aclose()
    return friday.calls, saturday.calls


async def test_r1_2_restart_on_a_clock_set_back_keeps_the_new_day(tmp_path: Path) -> None:
    """R1.2, R1.5: a run on Saturday just after midnight, then a restart whose wall clock
    was set back to 23:59 Friday: the restarted run's calls count toward Saturday, and
    Friday (over for the store) gets none."""
    saturday = FixedWallClock(datetime(2026, 11, 28, 0, 0, 30, tzinfo=UTC))
    first = build_orchestrator({"a": CallsEverySecond}, config=_config(tmp_path, "s1", 10_000),
                               wall=saturday, provider=ScriptedProvider(latency_s=0.05))
    await first.run([TaskSpec(id="t1", agent="a", prompt="x")])
    friday = FixedWallClock(datetime(2026, 11, 27, 23, 59, tzinfo=UTC))
    again = build_orchestrator({"a": CallsEverySecond}, config=_config(tmp_path, "s2", 10_000),
                               wall=friday, provider=ScriptedProvider(latency_s=0.05))
    await again.run([TaskSpec(id="t2", agent="a", prompt="x")])
    assert await _day_totals(tmp_path) == (0, 16)


async def test_r3_4_pause_lifts_when_another_process_began_the_next_day(
        tmp_path: Path) -> None:
    """R3.4, R1.2: a process whose wall clock is behind the fleet's pauses on Friday's day
    budget; once another process on the store has begun Saturday, the pause lifts (one
    calendar check later) and the rest of its calls count toward Saturday."""
    behind = build_orchestrator(
        {"a": CallsEverySecond}, config=_config(tmp_path, "s1"),
        wall=FixedWallClock(datetime(2026, 11, 27, 23, 59, 50, tzinfo=UTC)),
        provider=ScriptedProvider(latency_s=0.05))
    paused = anyio.Event()
    events: list[Event] = []
    behind.bus.subscribe(events.append)
    behind.bus.subscribe(lambda e: paused.set() if e.name == "task_paused" else None)

    async def another_process_on_saturday() -> None:
        await paused.wait()
        ahead = build_orchestrator(
            {"a": TwoCalls}, config=_config(tmp_path, "s2"),
            wall=FixedWallClock(datetime(2026, 11, 28, 0, 0, 5, tzinfo=UTC)),
            provider=ScriptedProvider(latency_s=0.05))
        await ahead.run([TaskSpec(id="t2", agent="a", prompt="x")])

    with anyio.fail_after(600):  # virtual: a few calendar checks
        async with anyio.create_task_group() as tg:
            tg.start_soon(another_process_on_saturday)
            report = await behind.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status is TaskStatus.COMPLETED
    assert [e.name for e in events].count("pause_lifted") == 1
    assert await _day_totals(tmp_path) == (6, 2 + 2)
