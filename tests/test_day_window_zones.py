"""The local date a day budget counts in, on days a time-zone change makes uneven (R1.2):
23- and 25-hour days, a midnight a DST change skips or repeats, a day a zone skips whole;
the date kept between readings is the one ``datetime.now()`` gives at every moment."""

from __future__ import annotations

import os
import time
from datetime import date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

import scheduler.core._clock as clock_module
from scheduler.core import SystemWallClock

#: (zone, a day around which its offset changes at an awkward hour)
_ZONES = [
    ("Europe/Berlin", date(2026, 3, 29)),  # 23 hours (02:00 -> 03:00)
    ("Europe/Berlin", date(2026, 10, 25)),  # 25 hours
    ("America/New_York", date(2026, 3, 8)),
    ("America/New_York", date(2026, 11, 1)),
    ("Australia/Lord_Howe", date(2026, 4, 5)),  # half an hour back
    ("Australia/Lord_Howe", date(2026, 10, 4)),  # half an hour on
    ("America/Sao_Paulo", date(2018, 11, 4)),  # midnight skipped: 00:00 -> 01:00
    ("America/Sao_Paulo", date(2019, 2, 17)),  # 23:00 of the 16th twice
    ("America/Havana", date(2019, 3, 10)),  # midnight skipped
    ("America/St_Johns", date(2010, 11, 7)),  # 00:01 -> 23:01 of the day before
    ("Pacific/Apia", date(2011, 12, 30)),  # the 30th never happened
]


def _instants(day: date) -> list[float]:
    """Every ten minutes from two days before ``day`` to two after, and each second
    around every change of the local offset and every local midnight among them."""
    start = datetime(*(day - timedelta(days=2)).timetuple()[:3]).timestamp()
    grid = [start + 600 * i for i in range(4 * 144)]
    out = list(grid)
    for a, b in pairwise(grid):
        if time.localtime(a).tm_gmtoff != time.localtime(b).tm_gmtoff or (
                time.localtime(a).tm_mday != time.localtime(b).tm_mday):
            out += [float(s) + f for s in range(int(a), int(b) + 1) for f in (0.0, 0.999999)]
    return sorted(out)


@pytest.mark.parametrize(("tz", "day"), _ZONES, ids=[f"{z}-{d}" for z, d in _ZONES])
def test_r1_2_kept_date_is_the_local_date_on_uneven_days(
    tz: str, day: date, zone: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R1.2: read in time order, and again with the clock stepped back and forth, the
    wall clock's date is ``datetime.now()``'s date at that moment, and the bounds it keeps
    it for hold no moment of another date."""
    if not Path("/usr/share/zoneinfo", tz).exists():
        pytest.skip(f"no tz data for {tz}")
    os.environ["TZ"] = tz
    time.tzset()
    instants = _instants(day)
    now = [0.0]
    monkeypatch.setattr(clock_module, "_epoch", lambda: now[0])
    stepped = instants + instants[::-7] + instants[::3]
    wall = SystemWallClock()
    wrong = []
    for at in stepped:
        now[0] = at
        want = datetime.fromtimestamp(int(at)).date()  # ``datetime.now()`` cuts microseconds
        got, since, until = wall.day_window()
        if got != want or wall.stamp()[1] != want or not since <= at < until or any(
                datetime.fromtimestamp(b).date() != got for b in (since, until - 1)):
            wrong.append((datetime.fromtimestamp(at).astimezone().isoformat(), got, want))
    assert wrong == []
