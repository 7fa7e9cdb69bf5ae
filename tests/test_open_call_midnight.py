"""R1.5: a call admitted before midnight whose process dies after it, with the call out,
is charged at its estimate to the day that admitted it -- where its actual usage would
have counted (``Reservation.day``) -- not to the day that began while it waited."""

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


async def test_r1_5_call_opened_after_midnight_is_charged_to_the_day_that_admitted_it(
    tmp_path: Path,
) -> None:
    """R1.5: admitted on Friday at 23:59:59, its record written at 00:00:01 (it waited
    for a lease across midnight), its process killed: the estimate counts toward Friday,
    once, and Saturday starts from nothing."""
    wall = FixedWallClock(datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC))
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    killed = Tracker(store, VibeConfig(), session_id="killed", wall=wall)
    await killed.open()
    profile = TaskProfile("code_modification", "moderate", Limits(), False, False)
    await killed.start_task("t", profile, agent="a")
    res = await killed.reserve_shared("t", model="sonnet", tokens=1234, cost_usd=0.01)
    assert res.day == FRIDAY
    wall.at = datetime(2026, 11, 28, 0, 0, 1, tzinfo=UTC)
    await killed.open_call(res, prompt_tokens=1000, output_tokens=234)
    await killed.close()  # gone with its call out: its record stays

    later = SqliteStore(tmp_path / "state.db")
    await later.open()
    charged = await Tracker(later, VibeConfig(), session_id="next", wall=wall).open()
    assert [(e.day, e.usage.total_tokens) for e in charged] == [(FRIDAY, 1234)]
    assert (await later.totals(f"day:{FRIDAY}")).tokens == 1234
    assert (await later.totals(f"day:{SATURDAY}")).tokens == 0
    await later.aclose()
    await store.aclose()
