"""Stress: hundreds of agents lock random files in random orders (R5.6, R5.7).

Whatever the interleaving, the run terminates (virtual time), every task ends
completed or failed with a reason, and no lock, waiter or wait-for edge is
left behind.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from scheduler import Limits, TaskSpec
from scheduler.config import AlertsConfig
from tests._deadlock_helpers import assert_clean, make_orch, run_scenario, spec


def _random_specs(seed: int, agents: int, files: int,
                  budget: Limits | None = None) -> list[TaskSpec]:
    rnd = random.Random(seed)
    specs = []
    for i in range(agents):
        names = rnd.sample(range(files), rnd.randint(1, 3))
        locks: list[object] = [
            f"file:/shared/f{n}" if rnd.random() < 0.7 else [f"file:/shared/f{n}", "shared"]
            for n in names
        ]
        specs.append(spec(
            f"t{i}", priority=rnd.choice(["background", "normal", "normal", "user_waiting"]),
            calls=rnd.randint(0, 2), locks=locks, hold_s=round(rnd.uniform(0.1, 1.0), 2),
            work_s=round(rnd.uniform(0.1, 1.0), 2), write="out.txt", budget=budget,
        ))
    return specs


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_r5_7_stress_random_file_locks_always_terminate_clean(
    tmp_path: Path, seed: int,
) -> None:
    """R5.6/R5.7: 300 agents, 60 files, random lock orders: terminates, no lock left.

    Time budgets are lifted so that every failure here is the deadlock retry limit.
    """
    orch = make_orch(tmp_path)
    specs = _random_specs(seed, agents=300, files=60, budget=Limits(time_s=1e6))
    report, observed = await run_scenario(orch, specs, 100_000.0)
    assert len(report.outcomes) == 300
    assert len(observed.victims) > 50, "random lock orders should deadlock often"
    for tid, out in report.outcomes.items():
        assert out.status in ("completed", "failed"), (tid, out.status)
        if out.status == "failed":
            assert f"task {tid} aborted: yielded due to deadlock" in out.reason
            assert "no requeue left" in out.reason and out.attempts == 4
    for victim in observed.victims:
        assert observed.held_at_event[victim] == []
    assert sum(o.status == "completed" for o in report.outcomes.values()) >= 240
    assert_clean(orch)


@pytest.mark.slow
async def test_r5_7_stress_heavy_contention_with_default_budgets(tmp_path: Path) -> None:
    """R5.6/R5.7: 300 agents on 25 files under the default budgets: every task ends,
    completed or failed with a reason (deadlock retry limit or time budget), nothing held.

    Nobody answers the pauses of tasks past their time budget (R3.4), so an unanswered
    pause saves and finishes the task after ``decision_timeout_s``."""
    orch = make_orch(tmp_path, alerts=AlertsConfig(decision_timeout_s=60.0))
    report, observed = await run_scenario(orch, _random_specs(7, 300, 25), 100_000.0)
    assert observed.victims
    for tid, out in report.outcomes.items():
        assert out.status == "completed" or (
            out.status in ("failed", "finished") and out.reason
        ), tid
    assert {o.status for o in report.outcomes.values()} >= {"completed", "failed"}
    assert_clean(orch)
