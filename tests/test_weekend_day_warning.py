"""R1.3 with R3.1: on Saturday and Sunday the day's cost limit is lowered, and its cost
warning moves with it (the same fraction of the limit), so the weekend's warning comes
at 70 % of the weekend's limit, as on a weekday."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from scheduler import Event, TaskSpec, VibeConfig
from scheduler.core import FixedWallClock
from scheduler.runtime import AgentContext
from scheduler.testing import ScriptedProvider, build_orchestrator, run_virtual

SATURDAY = "2026-11-28"


class ElevenCalls:
    async def run(self, ctx: AgentContext) -> None:
        for _ in range(11):  # $0.00035 each: $0.00385, 77 % of the weekend's $0.005
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                                   model="haiku")


def test_r1_3_weekend_day_warns_at_its_own_seventy_percent(tmp_path: Path) -> None:
    """R1.3, R3.1: a $0.02 day with its warning at $0.014 (70 %) is $0.005 on Saturday;
    eleven calls spend 77 % of it, and the day's warning fires (it fired only past
    $0.0045, the critical mark, when the warning stayed at the weekday's dollars)."""
    config = VibeConfig.model_validate({
        "state_dir": tmp_path, "store": "sqlite", "session_id": "s1",
        "budgets": {"day": {"cost_usd": 0.02, "cost_warning_usd": 0.014},
                    "weekend_day_cost_usd": 0.005}})
    orch = build_orchestrator(
        {"a": ElevenCalls}, config=config, provider=ScriptedProvider(),
        wall=FixedWallClock(datetime(2026, 11, 28, 10, 0, tzinfo=UTC)))
    events: list[Event] = []
    orch.bus.subscribe(events.append)
    run_virtual(orch.run, [TaskSpec(id="t1", agent="a", prompt="x")])
    day = [(e.name, e.data.get("percent")) for e in events
           if e.data.get("scope") == f"day:{SATURDAY}" and e.name.startswith("budget_")]
    assert ("budget_warning", 70) in day, day
    assert all(name != "budget_critical" for name, _ in day), day
