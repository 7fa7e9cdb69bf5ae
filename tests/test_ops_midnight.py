"""R1.2, R1.3: a file edit or shell command admitted before midnight and ending after it
counts toward the day whose budget admitted it, as a model call does: the new day starts
from nothing and its operation limit is never passed by counts it did not admit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler import VibeConfig
from scheduler.budget import TaskProfile, Tracker
from scheduler.config import Limits
from scheduler.core import FixedWallClock
from scheduler.store import SqliteStore

pytestmark = pytest.mark.anyio

FRIDAY, SATURDAY = "2026-11-27", "2026-11-28"


async def test_r1_3_operations_admitted_on_friday_count_toward_friday(tmp_path: Path) -> None:
    """R1.3: two edits Friday admitted at 23:59:59 end at 00:00:01, when two others
    Saturday admitted are under way: Friday counts two, Saturday two -- its limit of two,
    not four."""
    wall = FixedWallClock(datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC))
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    config = VibeConfig(session_id="s1", budgets={"day": Limits(file_edits=2)})
    tracker = Tracker(store, config, session_id="s1", wall=wall)
    await tracker.open()
    profile = TaskProfile("code_modification", "moderate", Limits(), False, False)
    await tracker.start_task("t", profile, agent="a")
    fridays = [tracker.hold_ops("t", file_edits=1) for _ in range(2)]
    wall.at = datetime(2026, 11, 28, 0, 0, 1, tzinfo=UTC)
    await tracker.load_today("t")
    saturdays = [tracker.hold_ops("t", file_edits=1) for _ in range(2)]
    for held in (*fridays, *saturdays):
        await tracker.charge(tracker.make_event("t", file_edits=1), ops_held=held)
    assert (await store.totals(f"day:{FRIDAY}")).file_edits == 2
    assert (await store.totals(f"day:{SATURDAY}")).file_edits == 2
    assert tracker.day_scope(wall.at.date()).totals.file_edits == 2
    await store.aclose()
