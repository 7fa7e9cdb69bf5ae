"""R1.2 across processes: the day a shared day budget counts in.

Processes on one store never answer a day before the latest day any of them began (a
process whose clock or time zone is a little ahead passed midnight first: the others
follow it, none reopens a day it closed).  A replica whose wall clock is far ahead
(days, a wrong clock) does not set the day for everyone: a day begun more than two days
after a process's own date (more than any two time zones' dates differ) is not
followed by it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler import TaskSpec
from scheduler.config import VibeConfig
from scheduler.core import FixedWallClock
from scheduler.store import SqliteStore
from scheduler.testing import FRIDAY, ScriptedProvider, build_orchestrator, run_virtual

SATURDAY, MONDAY = FRIDAY + timedelta(days=1), FRIDAY + timedelta(days=3)


class _FiveCalls:
    async def run(self, ctx: Any) -> None:
        for _ in range(5):
            await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=100)


def _days_used(tmp_path: Path, ahead: int) -> dict[str, int]:
    """A process whose clock reads ``ahead`` days after Friday runs first on a SQLite
    file, then one on Friday's clock: the tokens of each day in the store."""
    db = tmp_path / "shared.db"

    async def main() -> dict[str, int]:
        for name, day in (("ahead", FRIDAY + timedelta(days=ahead)), ("friday", FRIDAY)):
            orch = build_orchestrator({"c": _FiveCalls}, config=VibeConfig(
                state_dir=tmp_path / name, store=f"sqlite:///{db}", session_id=name,
                budgets={"session": {}, "day": {"tokens": 100_000},
                         "weekend_day_cost_usd": None}),
                wall=FixedWallClock(datetime(day.year, day.month, day.day, 12, tzinfo=UTC)),
                provider=ScriptedProvider(latency_s=0.5, prompt=1, completion=100))
            await orch.run([TaskSpec(id="t", agent="c", prompt="x")])
        store = SqliteStore(db)
        await store.open()
        try:
            return {d.isoformat(): (await store.totals(f"day:{d}")).tokens
                    for d in (FRIDAY, SATURDAY, MONDAY)}
        finally:
            await store.aclose()

    return run_virtual(main)


def test_r1_2_a_replica_whose_clock_is_days_ahead_does_not_set_the_day_for_everyone(
        tmp_path: Path) -> None:
    """R1.2: a process whose clock reads Monday ran on the store; one on Friday's clock
    charges Friday's day (before: Monday's, the day the far-ahead clock began, so
    Friday's day budget no longer counted its use and Monday's was spent ahead)."""
    used = _days_used(tmp_path, ahead=3)
    assert used == {FRIDAY.isoformat(): 505, SATURDAY.isoformat(): 0,
                    MONDAY.isoformat(): 505}, used


def test_r1_2_a_replica_a_day_ahead_still_sets_the_fleets_day(tmp_path: Path) -> None:
    """R1.2: a process past midnight first (its clock or time zone a little ahead) began
    Saturday: the one still on Friday follows it (Friday is closed for the fleet)."""
    used = _days_used(tmp_path, ahead=1)
    assert used == {FRIDAY.isoformat(): 0, SATURDAY.isoformat(): 1010,
                    MONDAY.isoformat(): 0}, used
