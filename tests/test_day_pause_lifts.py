"""A pause at a day budget lifts when that day is over (R3.4 with R1.2's day scope).

The day's budget starts over at local midnight, so a task paused because the day ran
out has nothing left to wait for; a pause at any other scope still waits for a person.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from scheduler import Event, Limits, TaskSpec, VibeConfig
from scheduler.control._new_day import day_is_over, scope_day
from scheduler.runtime import AgentContext, Orchestrator
from scheduler.store import SqliteStore
from scheduler.tasks import TaskStatus
from scheduler.testing import ScriptedProvider, build_orchestrator
from tests.test_ledger_days import LoopWallClock

pytestmark = pytest.mark.anyio
FRIDAY, SATURDAY = "2026-11-27", "2026-11-28"


class EightCalls:
    async def run(self, ctx: AgentContext) -> None:
        for _ in range(8):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                                   model="haiku")


def _orchestrator(tmp_path: Path, budgets: dict[str, Limits], *, minute: int = 50) -> (
        Orchestrator):
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1", budgets=budgets)
    wall = LoopWallClock(datetime(2026, 11, 27, 23, minute, tzinfo=UTC))
    return build_orchestrator({"a": EightCalls}, config=config, wall=wall,
                              provider=ScriptedProvider(latency_s=0.05))


def test_r3_4_scope_day_reads_day_scopes_only() -> None:
    """R3.4: only ``day:`` and ``task-day:`` scopes have a day that can be over."""
    assert str(scope_day(f"day:{FRIDAY}")) == FRIDAY
    assert str(scope_day(f"task-day:key/conv:{FRIDAY}")) == FRIDAY
    assert scope_day("task:t1") is None and scope_day("session:s1") is None
    assert scope_day("day:not-a-date") is None
    saturday = datetime(2026, 11, 28, tzinfo=UTC).date()
    assert day_is_over(f"day:{FRIDAY}", saturday)
    assert not day_is_over(f"day:{SATURDAY}", saturday)


async def test_r3_4_day_budget_pause_lifts_at_midnight(tmp_path: Path) -> None:
    """R3.4, R1.2: a task paused on Friday's day budget, with nobody deciding, resumes after
    midnight on Saturday's budget and completes; Friday's total stays within its limit."""
    orch = _orchestrator(tmp_path, {"day": Limits(tokens=1_000)})
    events: list[Event] = []
    orch.bus.subscribe(events.append)
    with anyio.fail_after(3600):  # virtual: midnight is ten minutes after the start
        report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status is TaskStatus.COMPLETED
    names = [e.name for e in events]
    assert names.index("task_paused") < names.index("pause_lifted")
    lifted = next(e for e in events if e.name == "pause_lifted")
    assert lifted.data["scope"] == f"day:{FRIDAY}"
    applied = next(e for e in events if e.name == "decision_applied")
    assert applied.data["action"] == "resume"
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    friday = await store.totals(f"day:{FRIDAY}")
    saturday = await store.totals(f"day:{SATURDAY}")
    await store.aclose()
    assert 0 < friday.tokens <= 1_000 and saturday.tokens > 0
    assert friday.calls + saturday.calls == 8


async def test_r3_4_task_budget_pause_waits_past_midnight(tmp_path: Path) -> None:
    """R3.4: a pause at the task's own budget does not lift at midnight: five minutes into
    the virtual clock it is still paused (a few minutes past midnight: the paused task
    polls the store each second), until a person decides."""
    orch = _orchestrator(tmp_path, {}, minute=59)
    events: list[Event] = []
    orch.bus.subscribe(events.append)
    paused = anyio.Event()
    orch.bus.subscribe(lambda e: paused.set() if e.name == "task_paused" else None)

    async def decide_a_day_later() -> None:
        await paused.wait()
        await anyio.sleep(300)  # midnight and five of the new day's calendar checks
        assert orch.controller.is_paused("t1")
        await orch.decide("t1", "finish")

    async with anyio.create_task_group() as tg:
        tg.start_soon(decide_a_day_later)
        report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x",
                                          budget=Limits(tokens=600))])
    assert report.outcomes["t1"].status is TaskStatus.FINISHED
    assert "pause_lifted" not in [e.name for e in events]
