"""Live status after midnight shows the store's figure for the new day (R1.5, R3.1): what
this or another process already spent that day, not an empty placeholder."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Limits, TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.cli._decide import stored_status_rows
from scheduler.cli._status import gather_status
from scheduler.control._alerts import StatusRow
from scheduler.observe._observers import status_path
from scheduler.runtime import AgentContext
from scheduler.store import SqliteStore
from scheduler.testing import build_orchestrator
from tests.test_ledger_days import LoopWallClock

pytestmark = pytest.mark.anyio
SATURDAY = "2026-11-28"


class WaitsForTest:
    """No model call: the task ends when the test sets the event its prompt names."""

    events: dict[str, anyio.Event] = {}

    async def run(self, ctx: AgentContext) -> None:
        await self.events[ctx.task.prompt].wait()


def _day_tokens(budgets: Any) -> dict[str, Any]:
    bars = [b for b in budgets if b["scope"] == f"day:{SATURDAY}" and b["dimension"] == "tokens"]
    assert len(bars) == 1, budgets
    return dict(bars[0])


async def _spend_saturday(db: Path, event_id: str, usage: Usage) -> None:
    """Another process on the store spends on Saturday."""
    other = SqliteStore(db)
    await other.open()
    await other.record(UsageEvent(event_id=event_id, task_id="elsewhere", session_id="other",
                                  day=SATURDAY, at=0.0, model="haiku", usage=usage))
    await other.aclose()


async def _written_after_t1(state: Path) -> dict[str, Any]:
    """``status.json`` once it shows t1 completed (written after the other's spend)."""
    while True:
        try:
            doc: dict[str, Any] = json.loads(status_path(state).read_text("utf-8"))
        except (OSError, ValueError):
            doc = {}
        if any(t["task_id"] == "t1" and t["status"] == "completed"
               for t in doc.get("tasks", ())):
            return doc
        await anyio.sleep(0.5)


async def test_r1_5_live_status_shows_the_new_days_spend_from_the_store(
        tmp_path: Path) -> None:
    """R1.5: a run started at 23:59:50 charges nothing after midnight; another process
    (its clock ahead) has spent 900 of Saturday's 1,000 tokens, and t1 ends after
    midnight.  The status the run writes shows Saturday at 900 tokens, 90 %; after 100
    more, with nothing rewritten, ``vibe-engine status`` on the running orchestrator
    shows 1,000 (read from the store).  The 900 are in the store before the run reads
    Saturday at all: a run reads a new day's totals once, when it first needs them, and
    on virtual time the other process's steps could otherwise land after that read."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"day": Limits(tokens=1_000)})
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 50, tzinfo=UTC))
    orch = build_orchestrator({"waits": WaitsForTest}, config=config, wall=wall)
    spent = WaitsForTest.events["spent"] = anyio.Event()
    release = WaitsForTest.events["end"] = anyio.Event()
    saturday = date(2026, 11, 28)
    docs: list[Any] = []

    async def other_process_then_status() -> None:
        await _spend_saturday(tmp_path / "vibe.db", "other-run:1", Usage(800, 100))
        await anyio.sleep(12)  # two seconds after midnight
        spent.set()
        docs.append(await _written_after_t1(tmp_path))
        docs.append(await gather_status(tmp_path, "sqlite", today=saturday))
        await _spend_saturday(tmp_path / "vibe.db", "other-run:2", Usage(50, 50))
        docs.append(await gather_status(tmp_path, "sqlite", today=saturday))
        release.set()

    # virtual: each of the other process's file and store steps runs in a thread, and
    # while it does the clock jumps to the run's next timer (a minute or more away)
    with anyio.fail_after(3_600):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_process_then_status)
            await orch.run([TaskSpec(id="t1", agent="waits", prompt="spent"),
                            TaskSpec(id="t2", agent="waits", prompt="end")])
    written, first, then = docs
    bar = _day_tokens(written["budgets"])  # what the live view and serve's status show
    assert bar["used"] == 900 and bar["level"] == "critical", bar
    assert first["source"] == then["source"] == "orchestrator" and then["running"]
    assert _day_tokens(first["budgets"])["used"] == 900
    assert _day_tokens(then["budgets"])["used"] == 1_000  # the store's, read now


class OneCallThenWaits(WaitsForTest):
    async def run(self, ctx: AgentContext) -> None:
        await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                               model="haiku")
        await super().run(ctx)


async def _day_budget_row(state: Path, scope: str) -> StatusRow:
    """``status``'s row of a task's per-day budget, once its ``usage.json`` names ``scope``."""
    store = SqliteStore(state / "vibe.db")
    await store.open()
    try:
        while True:
            rows = [r for r in await stored_status_rows(store, state) if r.scope == scope]
            if rows:
                return rows[0]
            await anyio.sleep(0.5)
    finally:
        await store.aclose()


async def test_r1_5_day_budget_row_names_the_new_day_with_the_stores_figure(
        tmp_path: Path) -> None:
    """R1.5 (a ``serve`` key's ``day_budget`` row): t1, with a per-day budget, made its
    call on Friday and waits; after midnight another process spends 900 of its Saturday
    budget.  Once the run shows the new day, ``status`` has t1's row of Saturday at 900
    tokens (its ``usage.json`` kept naming Friday's scope, 150 tokens)."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1")
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 55, tzinfo=UTC))
    orch = build_orchestrator({"waits": WaitsForTest, "call": OneCallThenWaits},
                              config=config, wall=wall)
    spent = WaitsForTest.events["spent"] = anyio.Event()
    release = WaitsForTest.events["end"] = anyio.Event()
    rows: list[StatusRow] = []

    async def other_process_then_status() -> None:
        await anyio.sleep(12)  # seven seconds after midnight
        other = SqliteStore(tmp_path / "vibe.db")
        await other.open()
        await other.record(UsageEvent(
            event_id="other-run:1", task_id="t1", session_id="other", day=SATURDAY, at=0.0,
            model="haiku", usage=Usage(800, 100), day_scope="t1"))
        await other.aclose()
        spent.set()
        rows.append(await _day_budget_row(tmp_path, f"task-day:t1:{SATURDAY}"))
        release.set()

    # virtual: each of the other process's file and store steps runs in a thread, and
    # while it does the clock jumps to the run's next timer (a minute or more away)
    with anyio.fail_after(3_600):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_process_then_status)
            await orch.run([
                TaskSpec(id="t1", agent="call", prompt="end", day_budget=Limits(tokens=1_000)),
                TaskSpec(id="t2", agent="waits", prompt="spent")])
    (row,) = rows
    assert row.dimension == "tokens" and row.used == 900 and row.level == "critical", row
