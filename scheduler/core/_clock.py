"""The event loop's clock, and wall-clock dates for day budgets (injected so tests can
pick the day).

Elapsed time and deadlines always come from the event loop (``anyio.current_time``,
or :func:`loop_time`, the same reading without its lookup); only the calendar day a
charge belongs to needs the wall clock, and it is read through a :class:`WallClock`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
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

    #: Longest a date read is reused for, in seconds of the event loop's clock: the wall
    #: clock may jump (a suspend, a manual change) while the loop's does not.
    DAY_REUSE_S = 1.0

    def __init__(self) -> None:
        self._day: date | None = None
        self._day_until = 0.0  # loop time up to which ``_day`` is still today

    def now(self) -> datetime:
        return datetime.now().astimezone()

    def timestamp(self) -> float:
        """``now().timestamp()`` without the time-zone lookup (seconds since the epoch)."""
        return datetime.now(UTC).timestamp()

    def today(self) -> date:
        """The local date, as ``now().date()`` -- without the time-zone lookup that makes
        ``astimezone()`` the costly part of :meth:`now`.  A governed call asks a dozen
        times: on asyncio a reading is reused for up to :attr:`DAY_REUSE_S` of loop time,
        never past the local midnight (the last second before it reads every time)."""
        loop = asyncio._get_running_loop()
        if loop is None:
            return date.today()
        at = loop.time()
        if at < self._day_until and self._day is not None:
            return self._day
        now = datetime.now()
        left = 86_400.0 - (now.hour * 3600 + now.minute * 60 + now.second
                           + now.microsecond / 1e6)
        self._day = now.date()
        self._day_until = at + min(self.DAY_REUSE_S, left - 1.0)
        return self._day


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
