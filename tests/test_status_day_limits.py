"""``vibe-engine status -c CONFIG`` after the last run's day shows today's day bar with the
config's day limits (R1.3: lowered on Saturday and Sunday), not the defaults'."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from scheduler import TaskSpec
from scheduler.budget import day_limits
from scheduler.cli._status import gather_status
from scheduler.config import load_config
from scheduler.core import FixedWallClock
from scheduler.runtime import AgentContext
from scheduler.testing import build_orchestrator, run_virtual
from tests._cli_helpers import cli

THURSDAY, FRIDAY, SATURDAY = date(2026, 11, 26), date(2026, 11, 27), date(2026, 11, 28)


class OneCall:
    async def run(self, ctx: AgentContext) -> None:
        await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100,
                               model="haiku")


def _ran_on_thursday(tmp_path: Path) -> Path:
    path = tmp_path / "vibe.toml"
    path.write_text(f'state_dir = "{tmp_path / "st"}"\nstore = "sqlite"\n'
                    "[budgets]\nweekend_day_cost_usd = 3.0\n"
                    "[budgets.day]\ncost_usd = 7.0\n", encoding="utf-8")
    orch = build_orchestrator({"a": OneCall}, config=load_config(path),
                              wall=FixedWallClock(THURSDAY))
    run_virtual(orch.run, [TaskSpec(id="t1", agent="a", prompt="x")])
    return path


def _day_limit(budgets: Sequence[Mapping[str, Any]], day: date) -> object:
    (bar,) = [b for b in budgets if b["scope"] == f"day:{day}" and b["dimension"] == "cost_usd"]
    return bar["limit"]


def test_r1_3_status_day_bar_takes_the_configs_day_limits(tmp_path: Path) -> None:
    """R1.3: the config's $7 day ($3 at the weekend), on Friday and on Saturday after a
    Thursday run; and ``status -c`` today shows the config's limit for today."""
    path = _ran_on_thursday(tmp_path)
    config = load_config(path)
    for day, limit in ((FRIDAY, 7.0), (SATURDAY, 3.0)):
        doc = run_virtual(lambda d=day: gather_status(tmp_path / "st", "sqlite", today=d,
                                                      config=config))
        assert _day_limit(doc["budgets"], day) == limit
    result = cli(["status", "-c", str(path), "--json"], tmp_path)
    assert result.code == 0, result
    today = date.today()  # what the command reads; the limit is the config's for it
    assert _day_limit(json.loads(result.stdout)["budgets"], today) == (
        day_limits(config, today).cost_usd)
