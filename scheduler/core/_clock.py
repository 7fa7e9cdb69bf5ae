"""The event loop's clock, and wall-clock dates for day budgets (injected so tests can
pick the day).

Elapsed time and deadlines always come from the event loop (``anyio.current_time``,
or :func:`loop_time`, the same reading without its lookup); only the calendar day a
charge belongs to needs the wall clock, and it is read through a :class:`WallClock`.
"""

from __future__ import annotations

import asyncio
import time as _time
from asyncio import _get_running_loop
from datetime import UTC, date, datetime
from math import floor
from time import localtime
from time import monotonic as _monotonic  # noqa: TID251 -- asyncio's loop clock itself
from time import time as _epoch  # noqa: TID251 -- the wall clock's own reading
from time import time_ns as _epoch_ns  # the same reading, in nanoseconds
from typing import Protocol

import anyio

#: The wall clock's reading in seconds since the epoch (``time.time``), for a caller that
#: keeps a :meth:`SystemWallClock.day_window` and checks it without a call of its own.
wall_seconds = _epoch
#: ``time()`` of asyncio's own loops: ``time.monotonic()``, read here without its frame.
_BASE_TIME = asyncio.BaseEventLoop.time


def loop_time() -> float:
    """``anyio.current_time()``, a microsecond or more cheaper on asyncio.

    anyio asks sniffio which library runs, per reading; a governed call reads the clock
    a dozen times.  On asyncio the answer is the running loop's ``time()`` (what anyio
    returns there) -- ``time.monotonic()`` itself on asyncio's own loops, whose ``time``
    is only that; with no asyncio loop running (trio on virtual time in tests) it is
    anyio's own reading.
    """
    loop = _get_running_loop()  # None, not an exception, off asyncio
    if loop is None:
        return anyio.current_time()
    if type(loop).time is _BASE_TIME and "time" not in loop.__dict__:
        return _monotonic()
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
        #: The local time zone the bounds are in: a ``time.tzset()`` replaces it (and moves
        #: local midnight), so the date is read anew.
        self._zone = _time.tzname

    def now(self) -> datetime:
        return datetime.now().astimezone()

    def timestamp(self) -> float:
        """``now().timestamp()`` without the time-zone lookup (seconds since the epoch):
        ``datetime.now`` reads the same clock to the microsecond below, and its
        ``timestamp()`` divides those microseconds as here."""
        return _epoch_ns() // 1000 / 1_000_000

    def today(self) -> date:
        """The local date, as ``now().date()``: a governed call asks a dozen times, so the
        time-zone lookup is made once per local day and each call only compares the
        epoch seconds with that day's bounds."""
        now = _epoch()
        if self._day_from <= now < self._day_to and _time.tzname is self._zone:
            return self._day
        return self._day_of(now)

    def day_window(self) -> tuple[date, float, float]:
        """:meth:`today`, and the epoch seconds (as :data:`wall_seconds` reads them) from
        which and until which it stays the date: a caller asking many times a day may
        keep the answer while the wall clock reads inside the bounds."""
        day = self.today()
        return day, self._day_from, self._day_to

    def stamp(self) -> tuple[float, date]:
        """``now().timestamp()`` and ``now().date()`` of one reading, without the time-zone
        lookup (see :meth:`today`): what an event's record notes."""
        now = _epoch()
        return now, self._day_of(now)

    def _day_of(self, now: float) -> date:
        """The local date at epoch seconds ``now`` (``now`` is the wall clock's reading)."""
        if self._day_from <= now < self._day_to and _time.tzname is self._zone:
            return self._day
        self._zone = _time.tzname
        second = floor(now)  # as ``datetime.now()``: the reading's microseconds cut, not rounded
        local = localtime(second)
        offset = local.tm_gmtoff
        # the day's bounds at this UTC offset, cut where the offset changes: a local
        # midnight a DST change skips (00:00 -> 01:00) or repeats (a fall back at 00:01)
        # does not bound the day, nor the hour before it
        start = second - (local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec)
        end = start + 86400
        if localtime(start).tm_gmtoff != offset:
            start = _offset_change(start, second, offset)
        if localtime(end - 1).tm_gmtoff != offset:
            end = _offset_change(second, end - 1, offset)
        self._day = day = date(local.tm_year, local.tm_mon, local.tm_mday)
        self._day_from, self._day_to = float(start), float(end)
        return day


def _offset_change(lo: int, hi: int, offset: int) -> int:
    """The second between ``lo`` and ``hi`` where the local UTC offset turns from or to
    ``offset`` (the one of the end that has it), by halving: a time-zone change is at a
    whole second, at most one a day."""
    at_lo = localtime(lo).tm_gmtoff == offset
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (localtime(mid).tm_gmtoff == offset) == at_lo:
            lo = mid
        else:
            hi = mid
    return hi


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
