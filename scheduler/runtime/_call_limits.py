"""The per-call limit (R1.3 ``call_time_s``) of every model call in flight.

A call bounded by its own deadline scope makes a loop timer and cancels it again,
each call: on asyncio that is most of what bounding it costs, though almost every
call ends long before its limit.  So each call enters a plain scope and is listed
here with its deadline, and one loop timer, set for the earliest deadline, cancels
the scopes whose calls ran past theirs.  A call's deadlines are made in the order
its calls start, per limit, so each limit's list is in deadline order and the timer
only ever looks at the front of each.  Elsewhere (trio, on virtual time in tests)
each call gets its own deadline scope.
"""

from __future__ import annotations

import asyncio
import math

import anyio

from scheduler.core import AsyncioCancelScope, until


class CallLimits:
    """Scopes that end calls at their deadlines, all on one loop timer (see the module)."""

    __slots__ = ("_due", "_limits", "_loop", "_timer")

    def __init__(self) -> None:
        #: Per limit (seconds): the scopes of its calls in flight, each with its
        #: deadline, earliest first.
        self._limits: dict[float, dict[anyio.CancelScope, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = math.inf

    def scope(self, started: float, limit: float | None) -> anyio.CancelScope:
        """The scope to run a call in, cancelled ``limit`` seconds after ``started`` (loop
        time; never without a limit); :meth:`ended` once the call ended."""
        loop = asyncio._get_running_loop()
        if loop is None:
            return until(started + limit) if limit else anyio.CancelScope()
        scope = AsyncioCancelScope()
        if not limit:
            return scope
        calls = self._limits.get(limit)
        if calls is None:
            calls = self._limits[limit] = {}
        deadline = calls[scope] = started + limit
        if deadline < self._due or loop is not self._loop:
            self._arm(loop, deadline)
        return scope

    def ended(self, scope: anyio.CancelScope, limit: float | None) -> None:
        """The call of ``scope`` ended: its limit no longer applies (the scope stays, e.g.
        to shield the call's settle)."""
        if not limit:
            return
        calls = self._limits.get(limit)
        if calls is None or calls.pop(scope, None) is None:
            scope.deadline = math.inf  # a deadline scope of its own (not on asyncio)

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._due = loop, due
        self._timer = loop.call_at(due, self._expire)

    def _expire(self) -> None:
        """Cancel every call past its deadline; set the timer for the next deadline."""
        loop = self._loop
        self._timer, self._due = None, math.inf
        if loop is None:
            return
        now, nxt = loop.time(), math.inf
        for limit, calls in list(self._limits.items()):
            late = []
            for scope, due in calls.items():
                if due > now:
                    nxt = min(nxt, due)
                    break
                late.append(scope)
            for scope in late:
                del calls[scope]
                scope.cancel()
            if not calls:
                del self._limits[limit]
        if nxt < math.inf:
            self._arm(loop, nxt)
