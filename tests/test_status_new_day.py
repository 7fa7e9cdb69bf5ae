"""Live status after midnight shows the store's figure for the new day (R1.5, R3.1): what
this or another process already spent that day, not an empty placeholder."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import anyio
import pytest

from scheduler import Limits, TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.cli._status import gather_status
from scheduler.observe._schema import StatusDoc
from scheduler.runtime import AgentContext
from scheduler.testing import build_orchestrator
from tests.test_ledger_days import LoopWallClock

pytestmark = pytest.mark.anyio
SATURDAY = "2026-11-28"


class Sleeps:
    """No model call: the task only takes time (``prompt``: how many seconds)."""

    async def run(self, ctx: AgentContext) -> None:
        await anyio.sleep(float(ctx.task.prompt))


def _day_bar(doc: StatusDoc, scope: str) -> dict[str, object]:
    bars = [b for b in doc["budgets"] if b["scope"] == scope and b["dimension"] == "tokens"]
    assert len(bars) == 1, doc["budgets"]
    return dict(bars[0])


async def test_r1_5_live_status_shows_the_new_days_spend_from_the_store(
        tmp_path: Path) -> None:
    """R1.5: a run started at 23:59:50 charges nothing after midnight; another process
    spends 900 of Saturday's 1,000 tokens.  When a task ends (the status is rewritten),
    ``vibe-engine status`` on the running orchestrator shows Saturday at 900 tokens, 90 %;
    after 100 more, with nothing rewritten, it shows 1,000 (read from the store)."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"day": Limits(tokens=1_000)})
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 50, tzinfo=UTC))
    orch = build_orchestrator({"sleeps": Sleeps}, config=config, wall=wall)
    docs: list[StatusDoc] = []

    async def other_process_then_status() -> None:
        await anyio.sleep(12)  # two seconds after midnight
        await orch.store.record(UsageEvent(
            event_id="other-run:1", task_id="elsewhere", session_id="other", day=SATURDAY,
            at=0.0, model="haiku", usage=Usage(800, 100), cost_usd=0.001))
        await anyio.sleep(8)  # t1 ended at 15 s: the status was written after that
        docs.append(await gather_status(tmp_path, "sqlite", today=date(2026, 11, 28)))
        await orch.store.record(UsageEvent(  # nothing changes here: the file stays
            event_id="other-run:2", task_id="elsewhere", session_id="other", day=SATURDAY,
            at=0.0, model="haiku", usage=Usage(50, 50), cost_usd=0.001))
        docs.append(await gather_status(tmp_path, "sqlite", today=date(2026, 11, 28)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_process_then_status)
        await orch.run([TaskSpec(id="t1", agent="sleeps", prompt="15"),
                        TaskSpec(id="t2", agent="sleeps", prompt="40")])
    first, then = docs
    assert first["source"] == then["source"] == "orchestrator" and then["running"]
    bar = _day_bar(first, f"day:{SATURDAY}")
    assert bar["used"] == 900 and bar["level"] == "critical", bar
    assert _day_bar(then, f"day:{SATURDAY}")["used"] == 1_000  # the store's, read now
