"""The waiting queue of one pool: heaps per priority level, aging deadlines, parking.

Private to the allocator.  Waiters are indexed by binary heaps with lazy
deletion: an entry ``(key, seq, epoch, waiter)`` is live only while the waiter
is queued and its ``epoch`` matches, so moving a waiter (aging, demotion, a new
service counter) just pushes a new entry and bumps the epoch; stale entries are
dropped when they reach the top and purged when they dominate.

* one heap per effective priority level, keyed by the policy's rank (for
  ``PriorityWithFairness`` the service counter, so each level's head is also its
  least-served waiter);
* ``fair``: least service first over all levels, kept only for policies whose
  rank is not the counter;
* ``bg``: least service first among background-class waiters (R5.3 floor).

Priority changes over time (aging) are tracked in two structures: a fresh
waiter's first change comes ``first_step`` after its arrival, so those
deadlines arrive in order: fresh waiters form a doubly linked arrival list
through their own records (``oldest`` … ``newest``; O(1) to append and to
unlink at a grant, no entry objects, nothing to compact); any later change
goes to the ``aging`` heap.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from ._alloc_records import PARKED, QUEUED, Account, Waiter

__all__ = ["Entry", "WaitQueue"]

#: A heap entry: (key, seq, epoch, waiter).
Entry = tuple[float, int, int, Waiter]


class WaitQueue:
    """Queued and parked waiters of one pool, indexed for O(log n) selection."""

    def __init__(self, *, track_fair: bool) -> None:
        #: Keep the ``fair`` heap (policies whose rank is not the service counter).
        self.track_fair = track_fair
        self.levels: dict[int, list[Entry]] = {}
        #: The level heaps, highest level first (parallel to ``level_order``).
        self.heaps: list[list[Entry]] = []
        self.level_order: list[int] = []
        self.fair: list[Entry] = []
        self.bg: list[Entry] = []
        self.aging: list[tuple[float, int, int, Waiter]] = []
        #: The arrival list: fresh waiters (before their first priority change) in
        #: arrival order, linked through the records themselves (no entry objects).
        self.oldest: Waiter | None = None
        self.newest: Waiter | None = None
        #: How long after its arrival a fresh waiter's priority first changes.
        self.first_step = math.inf
        self.n_queued = 0
        self.n_bg_queued = 0
        #: At most the smallest service counter of any queued waiter (exact after a full
        #: scan in ``_select``; lowered whenever a waiter is queued or re-indexed below it).
        self.floor = -math.inf
        #: The most recently queued waiter (its counter bounds the least one from above).
        self.last_arrival: Waiter | None = None
        #: Parked requests of over-share holders, by holder id.
        self.parked: dict[str, list[Waiter]] = {}
        self.n_parked = 0

    # -- heaps ------------------------------------------------------------------------------
    def index(self, w: Waiter, level: int, rank: float) -> None:
        """Push fresh entries for ``w`` (bump ``w.epoch`` first: older entries turn stale)."""
        seq, epoch = w.seq, w.epoch
        heap = self.levels.get(level)
        if heap is None:
            heap = self.new_level(level)
        heapq.heappush(heap, (rank, seq, epoch, w))
        if self.track_fair:
            heapq.heappush(self.fair, (w.counter, seq, epoch, w))
        if w.background:
            heapq.heappush(self.bg, (w.counter, seq, epoch, w))

    def new_level(self, level: int) -> list[Entry]:
        heap: list[Entry] = []
        self.levels[level] = heap
        self.level_order = sorted(self.levels, reverse=True)
        self.heaps = [self.levels[x] for x in self.level_order]
        return heap

    def head(self, heap: list[Any]) -> Waiter | None:
        """The first live waiter of ``heap`` (stale entries are dropped)."""
        while heap:
            entry = heap[0]
            w: Waiter = entry[3]
            if entry[2] == w.epoch and w.state == QUEUED:
                return w
            heapq.heappop(heap)
        return None

    def top(self) -> Waiter | None:
        """The policy's first choice: the head of the highest non-empty level."""
        for heap in self.heaps:
            w = self.head(heap)
            if w is not None:
                return w
        return None

    def least_counter(self) -> float | None:
        """The smallest service counter among queued waiters (one call on the hot path)."""
        if self.track_fair:
            w = self.head(self.fair)
            return None if w is None else w.counter
        best: float | None = None
        heappop = heapq.heappop
        for heap in self.heaps:
            while heap:
                entry = heap[0]
                w = entry[3]
                if entry[2] == w.epoch and w.state == QUEUED:
                    if best is None or w.counter < best:
                        best = w.counter
                    break
                heappop(heap)
        return best

    def least(self) -> Waiter | None:
        """The queued waiter with the smallest service counter."""
        if self.track_fair:
            return self.head(self.fair)
        best: Waiter | None = None
        for heap in self.heaps:
            w = self.head(heap)
            if w is not None and (best is None or w.counter < best.counter):
                best = w
        return best

    # -- priority changes (aging) ----------------------------------------------------------
    def unlink_fresh(self, w: Waiter) -> None:
        """Take ``w`` out of the arrival list (its first priority change is moot)."""
        w.fresh = False
        older, newer = w.older, w.newer
        if older is None:
            self.oldest = newer
        else:
            older.newer = newer
            w.older = None
        if newer is None:
            self.newest = older
        else:
            newer.older = older
            w.newer = None

    def push_change(self, at: float, w: Waiter) -> None:
        heapq.heappush(self.aging, (at, w.seq, w.epoch, w))

    def next_change(self) -> float | None:
        """The earliest pending priority change (stale entries are dropped)."""
        heap = self.aging
        while heap and not _live(heap[0]):
            heapq.heappop(heap)
        oldest = self.oldest
        first: float | None = None if oldest is None else oldest.enqueued_at + self.first_step
        if heap and (first is None or heap[0][0] < first):
            return heap[0][0]
        return first

    def changes_due(self, now: float) -> bool:
        oldest, heap = self.oldest, self.aging
        return bool((oldest is not None and oldest.enqueued_at + self.first_step <= now)
                    or (heap and heap[0][0] <= now))

    def pop_changed(self, now: float) -> list[Waiter]:
        """Live waiters whose priority changes by ``now`` (their entries are consumed)."""
        due: list[Waiter] = []
        heap, step = self.aging, self.first_step
        oldest = self.oldest
        while oldest is not None and oldest.enqueued_at + step <= now:
            self.unlink_fresh(oldest)
            due.append(oldest)
            oldest = self.oldest
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if _live(entry):
                due.append(entry[3])
        return due

    # -- waiter bookkeeping -------------------------------------------------------------------
    def park(self, w: Waiter) -> None:
        """Set a request of an over-share holder aside until one of its leases ends."""
        w.state = PARKED
        if w.fresh:
            self.unlink_fresh(w)
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
        if w.fresh:
            self.unlink_fresh(w)
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
            a.waiters.remove(w)

    @property
    def entries(self) -> int:
        """Heap entries, live and stale (stale ones are dropped lazily)."""
        return (sum(len(heap) for heap in self.levels.values()) + len(self.fair) + len(self.bg)
                + len(self.aging))

    def maybe_compact(self) -> None:
        """Rebuild the heaps when stale entries dominate.

        Called after every re-indexing and every 256th grant, so stale entries
        stay within a constant factor of the live ones plus what 256 grants
        leave (amortised O(1) per push).
        """
        if self.entries <= 64 + 8 * self.n_queued:
            return
        heaps: tuple[list[Any], ...] = (*self.levels.values(), self.fair, self.bg, self.aging)
        for heap in heaps:
            live = [e for e in heap if _live(e)]
            heapq.heapify(live)
            heap[:] = live


def _live(entry: Any) -> bool:
    w: Waiter = entry[3]
    return entry[2] == w.epoch and w.state == QUEUED
