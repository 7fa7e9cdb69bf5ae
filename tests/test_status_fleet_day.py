"""R1.2 at midnight: ``vibe-engine status`` read with no orchestrator running shows the
day the store's runs use -- the latest day a process on the store began -- as a running
orchestrator would (it never answers a day before that one), not the local date."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

from agents import discover_agents, make_provider
from scheduler import config_from_dict
from scheduler.core import FixedWallClock
from scheduler.runtime import Orchestrator
from scheduler.testing import run_virtual
from tests._cli_helpers import cli


def _run(tmp_path: Path, day: date) -> Path:
    """One task run on a SQLite store by an orchestrator whose wall clock reads ``day``
    (a process of the fleet past midnight, or in a time zone ahead); its state dir."""
    state = tmp_path / "st"
    config = config_from_dict({
        "state_dir": str(state), "store": "sqlite",
        # the day's cost cap stays (R1.3: $20, $5 on a weekend day) beside the tokens set
        "budgets": {"day": {"tokens": 1_000_000}},
        "provider": {"simulated": {"time_scale": 0.01,
                                   "failure_rate": {"haiku": 0, "sonnet": 0, "opus": 0}}},
        "tasks": [{"id": "q", "agent": "qa", "prompt": "Where is the config loaded?"}],
    })
    wall = FixedWallClock(datetime(day.year, day.month, day.day, 0, 0, 5).astimezone())
    orch = Orchestrator(config, provider=make_provider(config), agents=discover_agents(),
                        wall=wall)
    report = run_virtual(orch.run)
    assert report.outcomes["q"].status == "completed"
    return state


def _day_bars(state: Path, cwd: Path) -> dict[str, float]:
    out = cli(["status", "--json", "--state-dir", str(state)], cwd)
    assert out.code == 0, out
    return {f"{b['scope']} {b['dimension']}": b["used"]
            for b in json.loads(out.stdout)["budgets"] if b["scope"].startswith("day:")}


def test_r1_2_status_offline_shows_the_fleets_day_not_the_local_date(tmp_path: Path) -> None:
    ahead = date.today() + timedelta(days=1)
    state = _run(tmp_path, ahead)
    bars = _day_bars(state, tmp_path)
    # the run's own bars (its status.json) for the day it used, with the store's figures
    assert set(bars) == {f"day:{ahead} tokens", f"day:{ahead} cost_usd"}, bars
    assert bars[f"day:{ahead} tokens"] > 0


def test_r1_2_status_offline_on_a_past_day_shows_today(tmp_path: Path) -> None:
    """A store whose last run was on an earlier day: today's bar, empty (a new day)."""
    state = _run(tmp_path, date.today() - timedelta(days=1))
    bars = _day_bars(state, tmp_path)
    assert bars and all(k.startswith(f"day:{date.today()} ") for k in bars), bars
    assert set(bars.values()) == {0.0}
