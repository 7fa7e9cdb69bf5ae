"""R1.2: a day budget counts in the local day -- also after the process changes its time
zone (``TZ`` set and ``time.tzset()`` called in-process, by an embedding application).

The wall clock keeps the local day's bounds (epoch seconds) to answer the date without
a time-zone lookup per call; a ``tzset`` moves local midnight, so bounds kept from
before it are not used after it.  The zones are 26 hours apart (UTC-12 and UTC+14): the
local dates always differ, whatever the real time.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from scheduler import TaskSpec
from scheduler.config import VibeConfig
from scheduler.core import SystemWallClock
from scheduler.runtime import Orchestrator
from scheduler.store import SqliteStore
from scheduler.testing import ScriptedProvider, run_virtual

WEST, EAST = "Etc/GMT+12", "Etc/GMT-14"  # POSIX signs: UTC-12 and UTC+14


def _set_zone(tz: str) -> None:
    os.environ["TZ"] = tz
    time.tzset()


class _MovesEast:
    """A call, the time zone set 26 hours east in-process, a call."""

    async def run(self, ctx: Any) -> None:
        await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=100)
        _set_zone(EAST)
        await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=100)


def test_r1_2_the_wall_clocks_date_follows_an_in_process_tzset(zone: None) -> None:
    """R1.2: the wall clock's date right after a ``tzset`` is the new zone's (before:
    the old zone's, until the old zone's local day ended)."""
    _set_zone(WEST)
    wall = SystemWallClock()
    assert wall.today() == datetime.now().date()
    _set_zone(EAST)
    assert wall.today() == wall.stamp()[1] == datetime.now().date()


def test_r1_2_a_call_after_an_in_process_tzset_counts_in_the_new_local_day(
        tmp_path: Path, zone: None) -> None:
    """R1.2: a run on the system wall clock whose agent sets the time zone 26 hours east
    between two calls: the second call counts in the new local day (before: both in the
    old zone's day, until that day ended -- up to a day later)."""
    _set_zone(WEST)
    west = datetime.now().date()
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1",
                        budgets={"session": {}, "day": {"tokens": 100_000},
                                 "weekend_day_cost_usd": None})
    orch = Orchestrator(config, agents={"c": _MovesEast}, wall=SystemWallClock(),
                        provider=ScriptedProvider(latency_s=0.5, prompt=1, completion=100))
    run_virtual(orch.run, [TaskSpec(id="t", agent="c", prompt="x")])
    east = datetime.now().date()

    async def days() -> tuple[int, int]:
        store = SqliteStore(tmp_path / "vibe.db")
        await store.open()
        try:
            return ((await store.totals(f"day:{west}")).tokens,
                    (await store.totals(f"day:{east}")).tokens)
        finally:
            await store.aclose()

    assert east > west
    assert run_virtual(days) == (101, 101)
