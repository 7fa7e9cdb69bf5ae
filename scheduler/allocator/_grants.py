"""Grants and returns: a lease takes capacity from its pool, its end gives it back.

A grant takes the pool's slot and bucket levels, adds to the holder's
holdings, charges the request to the holder's service counter (VTC; settling
corrects the charge to what the call used) and to the pool's class-share
window, and makes the :class:`Lease`.  An end reverses the capacity and the
holdings, and lets the pool's waiters have what came back.  Both run on every
model call, so they read plain slots and make one object per grant: the lease.
"""

from __future__ import annotations

from typing import Protocol

from scheduler.allocator._bound_policy import BoundPolicy
from scheduler.allocator._leases import LEASE_IDS, Lease, LeaseTable, new_lease_id
from scheduler.allocator._pools import Pool
from scheduler.allocator._records import Account
from scheduler.allocator._servicer import Alarm

__all__ = ["Grants", "Queueing"]

_new_lease = object.__new__
_take_id = LEASE_IDS.pop  # a ready-made lease id (new_lease_id refills the list)


class Queueing(Protocol):
    """What grants and ends ask of the pools' scheduling (the :class:`Dispatcher`)."""

    def dispatch(self, p: Pool, now: float) -> None:
        """Serve ``p``'s waiters while the next one fits."""

    def unpark(self, p: Pool, hid: str, now: float) -> None:
        """Queue the holder's parked requests again."""

    def requeue(self, p: Pool, a: Account, now: float) -> None:
        """The holder's service counter moved: its queued requests move with it."""


class Grants:
    """Lends a pool's capacity as leases and takes it back."""

    __slots__ = ("_alarm", "_cost", "_queueing", "_w_in", "by_id", "ttl", "window")

    def __init__(self, bound: BoundPolicy, leases: LeaseTable, alarm: Alarm, *,
                 ttl: float, window_s: float) -> None:
        #: The live leases by id, in deadline order (see LeaseTable): a grant appends.
        self.by_id = leases.by_id
        self._alarm = alarm
        self.ttl = ttl
        self.window = window_s
        self._cost = bound.cost
        self._w_in = bound.w_in
        self._queueing: Queueing = _Unconnected()

    def connect(self, queueing: Queueing) -> None:
        """Where an end sends its pool's waiters, and a charge its holder's other requests."""
        self._queueing = queueing

    def grant(
        self, p: Pool, a: Account, tokens: int, calls: int, requested: int, now: float
    ) -> Lease:
        """Take ``tokens`` and ``calls`` of ``p`` for the account's holder: a new lease.

        (The dispatch loop keeps an inline copy for a pool that only counts slots.)
        """
        p.in_use += calls
        if not p.slots_only:
            if p.tpm is not None:
                p.tpm.level -= tokens
            if p.rpm is not None:
                p.rpm.level -= calls
        a.held_tokens += tokens
        a.held_calls += calls
        # Charge the grant to the holder's service counter now (VTC); settle corrects it.
        w_in = self._w_in
        charge = tokens * w_in if w_in is not None else self._cost(tokens, 0)
        if charge:
            a.counter += charge
            if a.waiter is not None:
                self._queueing.requeue(p, a, now)
        if now >= p.decay_at:
            p.decay(now, self.window)
        weight = charge or 1.0  # charge >= 0; a grant without tokens counts as one
        p.recent_all += weight
        if a.background:
            p.recent_bg += weight
        # Lease(...) without its __init__ frame: one Python call less per grant.
        lease = _new_lease(Lease)
        try:
            lease_id = _take_id()
        except IndexError:
            lease_id = new_lease_id()
        lease.id = lease_id
        lease.tokens = tokens
        lease.calls = calls
        lease.requested_tokens = requested
        lease.granted_at = now
        ttl = lease._ttl = self.ttl
        lease.charged = charge
        lease.active = True
        lease._account = a
        lease._deadline = None
        self.by_id[lease_id] = lease  # the latest deadline: at the end (see LeaseTable)
        grants = p.grants = p.grants + 1
        if not grants & 255:
            p.maybe_compact()  # now and then, purge what lazy deletion left (amortised O(1))
        alarm = self._alarm
        if now + ttl < alarm.at:
            alarm.ring()
        return lease

    def charge(self, lease: Lease, delta: float, now: float) -> None:
        """Correct the holder's service counter for ``lease`` (its queued requests follow)."""
        if not delta:
            return
        a: Account = lease._account
        a.counter += delta
        if a.waiter is not None:
            self._queueing.requeue(a.pool, a, now)

    def end(self, lease: Lease, now: float, tokens_back: int, calls_back: bool) -> None:
        """The lease is over (already out of the table): capacity and holdings come back,
        and waiters are served."""
        a: Account = lease._account
        p: Pool = a.pool
        calls = lease.calls
        p.in_use -= calls
        if not p.slots_only:
            if tokens_back and p.tpm is not None:
                p.tpm.refill(now)
                p.tpm.give(tokens_back)
            if calls_back and p.rpm is not None:
                p.rpm.refill(now)
                p.rpm.give(calls)
        a.held_tokens -= lease.tokens
        a.held_calls -= calls
        p.hold_total += now - lease.granted_at
        p.ended += 1
        if p.n_parked and a.holder.id in p.parked:
            self._queueing.unpark(p, a.holder.id, now)
        if p.n_queued or p.n_parked:
            self._queueing.dispatch(p, now)


class _Unconnected:
    """Stands in until :meth:`Grants.connect` (the allocator connects the parts it builds)."""

    def dispatch(self, p: Pool, now: float) -> None:  # pragma: no cover
        raise RuntimeError("Grants used before connect()")

    def unpark(self, p: Pool, hid: str, now: float) -> None:  # pragma: no cover
        raise RuntimeError("Grants used before connect()")

    def requeue(self, p: Pool, a: Account, now: float) -> None:  # pragma: no cover
        raise RuntimeError("Grants used before connect()")
