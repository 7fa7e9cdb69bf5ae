"""Which pauses a new day lifts: a per-day budget starts over at local midnight (R1.2),
so a task paused because a day's budget ran out has nothing left to wait for once that
day is over -- the next call is checked against the new day's budget (R3.4)."""

from __future__ import annotations

from datetime import date

from scheduler.budget import Tracker

#: How often a pause at a day budget looks at the calendar when nothing else wakes it
#: (loop seconds; a test's wall clock does not move with the loop's virtual time, so
#: the end of the day is checked, not scheduled).
CHECK_S = 60.0


def scope_day(scope: str) -> date | None:
    """The day of a per-day scope (``day:2026-12-03``, ``task-day:KEY:2026-12-03``)."""
    kind, _, rest = scope.partition(":")
    if kind not in ("day", "task-day"):
        return None
    try:
        return date.fromisoformat(rest.rpartition(":")[2])
    except ValueError:
        return None


def day_is_over(scope: str, today: date) -> bool:
    """True when ``scope`` is a per-day scope of a day before ``today``."""
    day = scope_day(scope)
    return day is not None and day < today


async def day_over(scope: str, tracker: Tracker) -> bool:
    """Whether ``scope`` is a per-day scope of a day that is over, here or for another
    process on the store (whose wall clock may be ahead of this one's)."""
    if scope_day(scope) is None:
        return False
    return day_is_over(scope, tracker.today()) or day_is_over(
        scope, await tracker.catch_up_day())
