"""R3.1 across processes: the 70/90/100 % alerts of a budget every process on a store
counts (the day, a shared session, a ``serve`` key's task) follow the shared total.

Two orchestrators on one SQLite file (or one Redis namespace) each spend 43 % of the
day: together 87 %.  Each process saw only its own calls (and what the others had
spent when it loaded the day), so neither fired the 70 % warning.  Now a shared hold
brings the totals the ledger read for its check (no read more), and the thresholds
follow them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Event, TaskSpec
from scheduler.config import VibeConfig
from scheduler.testing import FRIDAY, ScriptedProvider, build_orchestrator, run_real, run_virtual
from tests._redis_helpers import REDIS_URL

LIMIT = 10_000
CALLS = 43  # of 101 tokens each: 4,343 per orchestrator, 8,686 (87 %) together
DAY = f"day:{FRIDAY.isoformat()}"


class _Caller:
    calls = CALLS

    async def run(self, ctx: Any) -> None:
        for _ in range(self.calls):
            await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=100)


class _Further(_Caller):
    calls = 46  # 4,646 tokens each: 93 % together


def _fleet_alerts(tmp_path: Path, store: Callable[[str], str], latency_s: float,
                  runner: Callable[..., Any], agent: type[_Caller] = _Caller) -> list[Event]:
    async def main() -> list[Event]:
        orchs = [build_orchestrator({"c": agent}, config=VibeConfig(
            state_dir=tmp_path / name, store=store(name), session_id=name,
            budgets={"session": {}, "day": {"tokens": LIMIT}, "weekend_day_cost_usd": None},
        ), provider=ScriptedProvider(latency_s=latency_s, prompt=1, completion=100))
            for name in ("one", "two")]
        async with anyio.create_task_group() as tg:
            for orch in orchs:
                tg.start_soon(orch.run, [TaskSpec(id="t", agent="c", prompt="x")])
        return [e for o in orchs for e in o.bus.history
                if e.name.startswith("budget_") and e.data.get("scope") == DAY]

    return list(runner(main))


def _check(alerts: list[Event]) -> None:
    levels = [e.name for e in alerts]
    # 87 % of the day: the warning told once for the fleet, nothing above it
    assert levels.count("budget_warning") == 1, levels
    assert set(levels) == {"budget_warning"}, levels
    assert all(0.7 * LIMIT <= e.data["used"] < 0.9 * LIMIT for e in alerts), alerts


def test_r3_1_two_orchestrators_on_one_sqlite_file_warn_at_70_percent_of_the_day(
        tmp_path: Path) -> None:
    """R3.1, R1.2: 2 orchestrators on one SQLite file, each at 43 % of the day's tokens:
    the 70 % warning fires (before: in neither process)."""
    db = tmp_path / "shared.db"
    _check(_fleet_alerts(tmp_path, lambda _: f"sqlite:///{db}", 0.5, run_virtual))


def test_r3_1_two_orchestrators_on_redis_warn_at_70_percent_of_the_day(
        tmp_path: Path, redis_ns: str) -> None:
    """R3.1, R1.2: as on SQLite, with the orchestrators on one Redis namespace."""
    _check(_fleet_alerts(tmp_path, lambda _: f"{REDIS_URL}?namespace={redis_ns}", 0.002,
                         run_real))



def test_r3_3_a_shared_days_critical_alert_is_posted_to_people_once_for_the_fleet(
        tmp_path: Path) -> None:
    """R3.3, R3.1: 2 orchestrators on one SQLite file pass 90 % of the day together: one
    of them -- the first to claim it in the store -- tells the crossing, with the
    ``notify`` action that webhooks post (before: both, a person was told twice); the
    other acts on it (tests/test_r3_1_fleet_alerts_once.py)."""
    db = tmp_path / "shared.db"
    alerts = _fleet_alerts(tmp_path, lambda _: f"sqlite:///{db}", 0.5, run_virtual, _Further)
    critical = [e for e in alerts if e.name == "budget_critical"]
    assert len(critical) == 1, alerts  # once for the fleet
    assert "notify" in critical[0].data["actions"], critical
    assert "aggressive" in critical[0].data["actions"]


class _OneCall:
    async def run(self, ctx: Any) -> None:
        await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=100)


def _burst_alerts(tmp_path: Path, store: Callable[[str], str], runner: Callable[..., Any],
                  tasks: int) -> list[Event]:
    """4 orchestrators on one store, each running ``tasks`` tasks of one call at once:
    every call takes its hold (reading the day's total) before any call is charged."""
    async def main() -> list[Event]:
        orchs = [build_orchestrator({"c": _OneCall}, config=VibeConfig(
            state_dir=tmp_path / name, store=store(name), session_id=name,
            budgets={"session": {}, "day": {"tokens": LIMIT}, "weekend_day_cost_usd": None},
        ), provider=ScriptedProvider(latency_s=0.5, prompt=1, completion=100))
            for name in ("a", "b", "c", "d")]
        async with anyio.create_task_group() as tg:
            for orch in orchs:
                tg.start_soon(orch.run, [TaskSpec(id=f"t{i}", agent="c", prompt="x")
                                         for i in range(tasks)])
        return [e for o in orchs for e in o.bus.history
                if e.name.startswith("budget_") and e.data.get("scope") == DAY]

    return list(runner(main))


def _check_burst(alerts: list[Event], *, critical: bool) -> None:
    levels = [e.name for e in alerts]
    assert levels.count("budget_warning") == 1, levels  # once for the fleet
    if not critical:  # 85 % of the day
        assert set(levels) == {"budget_warning"}, levels
        return
    told = [e for e in alerts if e.name == "budget_critical"]  # 93 % of the day
    assert len(told) == 1 and set(levels) == {"budget_warning", "budget_critical"}
    assert "notify" in told[0].data["actions"], told  # once for the fleet
    assert all(e.data["used"] >= 0.9 * LIMIT for e in told), told


def test_r3_1_a_burst_of_four_orchestrators_on_sqlite_warns_at_70_percent_of_the_day(
        tmp_path: Path) -> None:
    """R3.1, R1.2: 4 orchestrators on one SQLite file each start 21 one-call tasks at once:
    all 84 calls hold their estimate (each hold reading the day's total: nothing spent
    yet), then all are charged -- 8,484 tokens, 85 % of the day.  The charge's commit
    brings back the day's shared total, and the 70 % warning fires (before: in no
    process, each having seen only its own 21 %)."""
    db = tmp_path / "shared.db"
    _check_burst(_burst_alerts(tmp_path, lambda _: f"sqlite:///{db}", run_virtual, 21),
                 critical=False)


def test_r3_1_r3_3_a_burst_past_90_percent_on_sqlite_is_told_to_people_once(
        tmp_path: Path) -> None:
    """R3.1, R3.3: as above with 23 tasks each (93 % of the day): the 90 % crossing is
    reported, and posted to people by one process only (before: no alert at all)."""
    db = tmp_path / "shared.db"
    _check_burst(_burst_alerts(tmp_path, lambda _: f"sqlite:///{db}", run_virtual, 23),
                 critical=True)


@pytest.mark.parametrize(("tasks", "critical"), [(21, False), (23, True)])
def test_r3_1_r3_3_a_burst_of_four_orchestrators_on_redis_warns_and_tells_once(
        tmp_path: Path, redis_ns: str, tasks: int, critical: bool) -> None:
    """R3.1, R3.3: the bursts above with the orchestrators on one Redis namespace: the
    charge's script answers with the day's totals (before: no alert at 85 % nor 93 %)."""
    url = f"{REDIS_URL}?namespace={redis_ns}"
    _check_burst(_burst_alerts(tmp_path, lambda _: url, run_real, tasks), critical=critical)
