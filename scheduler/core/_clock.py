"""The event loop's clock, and wall-clock dates for day budgets (injected so tests can
pick the day).

Elapsed time and deadlines always come from the event loop (``anyio.current_time``,
or :func:`loop_time`, the same reading without its lookup); only the calendar day a
charge belongs to needs the wall clock, and it is read through a :class:`WallClock`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from time import time as _epoch  # noqa: TID251 -- the wall clock's own reading
from typing import Protocol

import anyio


def loop_time() -> float:
    """``anyio.current_time()``, a microsecond or more cheaper on asyncio.

    anyio asks sniffio which library runs, per reading; a governed call reads the clock
    a dozen times.  On asyncio the answer is the running loop's ``time()`` (what anyio
    returns there); with no asyncio loop running (trio on virtual time in tests) it is
    anyio's own reading.
    """
    loop = asyncio._get_running_loop()  # None, not an exception, off asyncio
    if loop is None:
        return anyio.current_time()
    return loop.time()


class WallClock(Protocol):
    def now(self) -> datetime: ...


class SystemWallClock:
    """The machine's local time (a user's "day" is their local day)."""

    def __init__(self) -> None:
        self._day = date.min
        # the epoch seconds of the local day's start and end: while the wall clock reads
        # inside them, the date is the one read last.  The window is checked on every
        # call, so a jump of the wall clock (a suspend, a manual change) is seen at once.
        self._day_from = self._day_to = 0.0

    def now(self) -> datetime:
        return datetime.now().astimezone()

    def timestamp(self) -> float:
        """``now().timestamp()`` without the time-zone lookup (seconds since the epoch)."""
        return datetime.now(UTC).timestamp()

    def today(self) -> date:
        """The local date, as ``now().date()``: a governed call asks a dozen times, so the
        time-zone lookup is made once per local day and each call only compares the
        epoch seconds with that day's bounds."""
        return self._day_of(_epoch())

    def stamp(self) -> tuple[float, date]:
        """``now().timestamp()`` and ``now().date()`` of one reading, without the time-zone
        lookup (see :meth:`today`): what an event's record notes."""
        now = _epoch()
        return now, self._day_of(now)

    def _day_of(self, now: float) -> date:
        """The local date at epoch seconds ``now`` (``now`` is the wall clock's reading)."""
        if self._day_from <= now < self._day_to:
            return self._day
        day = datetime.fromtimestamp(now).date()
        midnight = datetime(day.year, day.month, day.day)
        self._day = day
        # a naive datetime's astimezone() takes it as local time: the bounds follow DST
        self._day_from = min(midnight.astimezone().timestamp(), now)
        self._day_to = max((midnight + timedelta(days=1)).astimezone().timestamp(), now)
        return day


class FixedWallClock:
    """A settable wall clock for tests and replays."""

    def __init__(self, at: datetime | date) -> None:
        if not isinstance(at, datetime):
            at = datetime(at.year, at.month, at.day, 12, 0, tzinfo=UTC)
        self.at = at

    def now(self) -> datetime:
        return self.at

    def timestamp(self) -> float:
        return self.at.timestamp()

    def today(self) -> date:
        return self.at.date()

    def stamp(self) -> tuple[float, date]:
        return self.at.timestamp(), self.at.date()
