"""``vibe-engine report`` counts a call toward the day whose budget admitted it, in its
per-day rows and in its hourly buckets alike (R1.2, R1.5): a call admitted at 23:59:58
and settled after midnight is one of Friday's, in the report as in the budget."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from scheduler import TaskSpec, VibeConfig
from scheduler.runtime import AgentContext
from scheduler.store import SqliteStore
from scheduler.testing import ScriptedProvider, build_orchestrator, run_virtual
from tests._cli_helpers import cli
from tests.test_ledger_days import LoopWallClock

FRIDAY, SATURDAY = "2026-11-27", "2026-11-28"


class TwoCalls:
    async def run(self, ctx: AgentContext) -> None:
        for _ in range(2):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                                   model="haiku")


def test_r1_2_report_hours_count_a_call_toward_the_day_that_admitted_it(
        tmp_path: Path) -> None:
    """R1.2: the first call is admitted at 23:59:58 Friday and settles three seconds
    later, on Saturday; the second is Saturday's.  The report's hourly buckets of each
    day add up to that day's row, and the first call is in Friday's 23:00 bucket."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1")
    # local time (the machine's zone): the report's hours are local hours
    wall = LoopWallClock(datetime(2026, 11, 27, 23, 59, 58).astimezone())
    orch = build_orchestrator({"a": TwoCalls}, config=config, wall=wall,
                              provider=ScriptedProvider(latency_s=3.0))
    run_virtual(orch.run, [TaskSpec(id="t1", agent="a", prompt="x")])

    async def days() -> list[str]:
        store = SqliteStore(tmp_path / "vibe.db")
        await store.open()
        try:
            return [e.day for e in await store.events() if e.model]
        finally:
            await store.aclose()

    assert run_virtual(days) == [FRIDAY, SATURDAY]  # the budget's days
    result = cli(["report", "--state-dir", str(tmp_path), "--json"], tmp_path)
    assert result.code == 0, result
    data = json.loads(result.stdout)
    per_day = {row["key"]: row["cost_usd"] for row in data["by_day"]}
    for day, cost in per_day.items():
        hours = {h: sum(m.values()) for h, m in data["cost_by_hour_model"].items()
                 if h.startswith(day)}
        assert round(sum(hours.values()), 9) == round(cost, 9), (day, hours, per_day)
    assert sum(data["cost_by_hour_model"][f"{FRIDAY} 23"].values()) == per_day[FRIDAY]
    assert f"{SATURDAY} 00" in data["cost_by_hour_model"]
