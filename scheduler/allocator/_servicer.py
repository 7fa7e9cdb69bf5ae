"""The allocator's one servicing task: lease expiry, and the wake-ups no request brings.

Requests and ends drive the allocator; three things happen on their own
time: a lease outlives its TTL (it expires and its capacity comes back), a
bucket refills enough for the waiter in front, and a waiter's priority ages.
One coroutine (:meth:`Servicer.run`) sleeps until the earliest of those
deadlines; whoever makes an earlier one rings the :class:`Alarm`, which wakes
it to sleep again with the new deadline.  There are no per-lease timers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio

from scheduler.allocator._leases import Lease, LeaseTable
from scheduler.allocator._pools import Pool
from scheduler.core import AllocationError, EventBus, get_logger

__all__ = ["Alarm", "Servicer"]

_log = get_logger("vibe_engine.allocator")


class Alarm:
    """When the servicing task wakes next, and how to wake it sooner."""

    __slots__ = ("at", "event")

    def __init__(self) -> None:
        #: The servicing task's wake-up deadline; -inf when it is not running or already
        #: rung, so a deadline compared with it (``at < alarm.at``) rings nothing then.
        self.at = -math.inf
        #: What the servicing task waits on (set while it runs).
        self.event: Any = None

    def ring(self) -> None:
        """Wake the servicing task: something is due before it would wake."""
        self.at = -math.inf
        self.event.set()


class Servicer:
    """Expires leases and serves the pools whose refill or aging is due, at each deadline."""

    __slots__ = ("_alarm", "_dispatch", "_end", "_events", "_leases", "_pools", "_running")

    def __init__(
        self,
        pools: dict[str, Pool],
        leases: LeaseTable,
        alarm: Alarm,
        *,
        end: Callable[[Lease, float, int, bool], None],
        dispatch: Callable[[Pool, float], None],
        events: EventBus | None,
    ) -> None:
        self._pools = pools
        self._leases = leases
        self._alarm = alarm
        #: Gives an ended lease's capacity back (and serves the waiters).
        self._end = end
        #: Serves a pool's waiters.
        self._dispatch = dispatch
        self._events = events
        self._running = False

    async def run(self, clock: Callable[[], float]) -> None:
        """Service deadlines forever (one task per allocator)."""
        if self._running:
            raise AllocationError("allocator is already being serviced")
        self._running = True
        event_cls: Callable[[], Any] = type(anyio.Event())
        alarm = self._alarm
        try:
            while True:
                self.service(clock())
                deadline = self.next_deadline()
                alarm.event = event_cls()
                alarm.at = deadline
                with anyio.CancelScope(deadline=deadline):
                    await alarm.event.wait()
        finally:
            self._running = False
            alarm.at = -math.inf

    def service(self, now: float) -> None:
        """Expire what is due and serve the pools whose refill or aging is due."""
        for lease in self._leases.pop_expired(now):
            self.expire(lease, now)
        for p in self._pools.values():
            refill = p.refill_at
            if (refill is not None and refill <= now) or p.aging.due(now, p.n_queued):
                p.refill_at = None
                self._dispatch(p, now)

    def expire(self, lease: Lease, now: float) -> None:
        """The lease (already out of the table) outlived its TTL: report it, take it back."""
        p = self._pools[lease.pool]
        p.expired += 1
        data: dict[str, Any] = {"holder": lease.holder, "pool": lease.pool,
                                "tokens": lease.tokens, "held_s": round(now - lease.granted_at, 3)}
        message = f"lease of {lease.holder} on {lease.pool} expired; capacity returned"
        if self._events is not None:
            self._events.emit("lease_expired", message, task_id=lease.holder, level="warning",
                              **data)
        else:
            _log.warning("lease_expired", message=message, **data)
        self._end(lease, now, lease.tokens, True)

    def next_deadline(self) -> float:
        """The earliest lease expiry, aging change or bucket refill (inf: none)."""
        first = self._leases.next_expiry()
        deadline = math.inf if first is None else first
        for p in self._pools.values():
            aging = p.aging.next_change(p.n_queued)
            if aging is not None:
                deadline = min(deadline, aging)
            if p.refill_at is not None:
                deadline = min(deadline, p.refill_at)
        return deadline
