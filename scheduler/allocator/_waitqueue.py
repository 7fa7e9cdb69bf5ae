"""The waiting queue of one pool: band queues per priority level, its aging, parking.

Private to the allocator.  Waiters are indexed by
:class:`~scheduler.allocator._bands.BandQueue` queues (lowest band first,
arrival order within a band) with lazy deletion.  An entry is a
:class:`~scheduler.allocator._bands.Key`: a float (the rank) that carries its
waiter.  An entry is live only while it is the one its waiter points at
(``waiter.entry`` in a level queue, ``waiter.centry`` in the queues by
service), so moving a waiter (aging, demotion, a new service counter) just
pushes a new entry, and a grant just clears ``waiter.entry`` (an entry by
service is live only while that is set); dead entries are dropped when they
reach the front and purged when they dominate.  For a policy that ranks by the
service counter one entry serves both roles.

* one queue per effective priority level, by the policy's rank in bands of
  ``level_quantum`` (for ``PriorityWithFairness`` the service counter in bands
  of ``fairness_quantum_tokens``, so each level's head is within a band of its
  least-served waiter);
* ``fair``: least service first over all levels, kept only for policies whose
  rank is not the counter;
* ``bg``: least service first among background-class waiters (R5.3 floor).

Priority changes over time (aging) are kept by the pool's
:class:`~scheduler.allocator._aging.Aging`.
"""

from __future__ import annotations

import math

from scheduler.allocator._aging import Aging
from scheduler.allocator._bands import BandQueue, key
from scheduler.allocator._records import PARKED, QUEUED, Account, Waiter

__all__ = ["WaitQueue"]


class WaitQueue:
    """Queued and parked waiters of one pool, indexed for O(1) selection."""

    #: Slots: the hot path reads these attributes on every request.
    __slots__ = (
        "accounts", "aging", "bg", "fair", "floor", "last_arrival", "level_order",
        "level_quantum", "levels", "n_bg_queued", "n_parked", "n_queued", "parked", "queues",
        "track_fair",
    )

    def __init__(self, *, track_fair: bool, quantum: float, level_quantum: float) -> None:
        #: Keep the ``fair`` queue (policies whose rank is not the service counter).
        self.track_fair = track_fair
        #: Band width of the level queues (in the policy's rank units).
        self.level_quantum = level_quantum
        self.levels: dict[int, BandQueue] = {}
        #: The level queues, highest level first (parallel to ``level_order``).
        self.queues: list[BandQueue] = []
        self.level_order: list[int] = []
        self.fair = BandQueue(quantum, by_service=True)
        self.bg = BandQueue(quantum, by_service=True)
        #: Per holder: service counter, holdings and waits in this pool.
        self.accounts: dict[str, Account] = {}
        #: When queued waiters' priorities change next.
        self.aging = Aging(self.accounts)
        self.n_queued = 0
        self.n_bg_queued = 0
        #: At most the smallest service counter of any queued waiter (lowered whenever a
        #: waiter is queued or re-indexed below it; raised by a full scan in ``_select``).
        self.floor = -math.inf
        #: The most recently queued waiter (its counter bounds the least one from above).
        self.last_arrival: Waiter | None = None
        #: Parked requests of over-share holders, by holder id.
        self.parked: dict[str, list[Waiter]] = {}
        self.n_parked = 0

    # -- queues -----------------------------------------------------------------------------
    def index(self, w: Waiter, level: int, rank: float) -> None:
        """Push fresh entries for ``w`` (its older entries turn dead)."""
        lq = self.levels.get(level)
        if lq is None:
            lq = self.new_level(level)
        entry = w.entry = key(rank, w)
        lq.push(entry)
        if self.track_fair:
            centry = w.centry = key(w.counter, w)
            self.fair.push(centry)
        else:
            centry = w.centry = entry  # the rank is the service counter
        if w.background:
            self.bg.push(centry)

    def new_level(self, level: int) -> BandQueue:
        lq = BandQueue(self.level_quantum)
        self.levels[level] = lq
        self.level_order = sorted(self.levels, reverse=True)
        self.queues = [self.levels[x] for x in self.level_order]
        return lq

    def top(self) -> Waiter | None:
        """The policy's first choice: the head of the highest non-empty level."""
        for lq in self.queues:
            w = lq.head()
            if w is not None:
                return w
        return None

    def least(self) -> Waiter | None:
        """The queued waiter served first by service (within a band of the least)."""
        if self.track_fair:
            return self.fair.head()
        best: Waiter | None = None
        for lq in self.queues:
            w = lq.head()
            if w is not None and (best is None or w.counter < best.counter):
                best = w
        return best

    def least_counter(self) -> float | None:
        """The service counter of :meth:`least` (the VTC lift, when its probe cannot decide)."""
        w = self.least()
        return None if w is None else w.counter

    # -- waiter bookkeeping -------------------------------------------------------------------
    def park(self, w: Waiter) -> None:
        """Set a request of an over-share holder aside until one of its leases ends."""
        w.state = PARKED
        w.entry = w.centry = None
        self.n_queued -= 1
        if w.background:
            self.n_bg_queued -= 1
        self.parked.setdefault(w.holder, []).append(w)
        self.n_parked += 1

    def unpark(self, hid: str) -> list[Waiter]:
        """Put a holder's parked requests back in the queue (the caller re-indexes them)."""
        ws = self.parked.pop(hid, [])
        for w in ws:
            w.state = QUEUED
            self.n_parked -= 1
            self.n_queued += 1
            if w.background:
                self.n_bg_queued += 1
        return ws

    def unlink(self, w: Waiter) -> None:
        """Take a queued or parked waiter out of the counts (its entries turn stale)."""
        w.entry = w.centry = None
        if w.state == PARKED:
            ws = self.parked[w.holder]
            ws.remove(w)
            if not ws:
                del self.parked[w.holder]
            self.n_parked -= 1
        else:
            self.n_queued -= 1
            if w.background:
                self.n_bg_queued -= 1
        a: Account | None = w.account
        if a is not None:
            a.remove_waiter(w)

    @property
    def entries(self) -> int:
        """Queue entries, live and dead (dead ones are dropped lazily)."""
        return (sum(lq.entries for lq in self.levels.values()) + self.fair.entries
                + self.bg.entries + len(self.aging))

    def maybe_compact(self) -> None:
        """Purge dead entries when they dominate.

        Called after every re-indexing and every 256th grant, so dead entries
        stay within a constant factor of the live ones plus what 256 grants
        leave (amortised O(1) per push).
        """
        if self.entries <= 64 + 8 * self.n_queued:
            return
        for lq in self.levels.values():
            lq.compact()
        self.fair.compact()
        self.bg.compact()
        self.aging.compact()

