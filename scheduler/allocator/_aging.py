"""Aging: when the priority of a pool's waiting requests changes next.

Private to the allocator's wait queue.  Priority changes over time go to a
heap of ``(at, seq, epoch, waiter)``, live while the waiter is queued in the
same wait (``seq``) and not re-indexed since (``epoch``).  With policy hints a
request's first change comes exactly ``first_step`` after its arrival, so the
hot path does nothing for it at all: every ``first_step / 2`` a *sweep* over
the waiting requests pushes the first change of those that arrived in the
half-step since the previous sweep (``aged_upto``), which is at least half a
step before any of them is due.  ``next_at`` bounds every pending change (and
the next sweep) from below, so the hot path checks for due changes with one
comparison.
"""

from __future__ import annotations

import heapq
import math

from scheduler.allocator._records import QUEUED, Account, Waiter

__all__ = ["Aging"]


class Aging:
    """The pending priority changes of one pool's waiters, earliest first."""

    #: Slots: the hot path reads ``next_at`` (and ``aged_upto``) on every request.
    __slots__ = ("accounts", "aged_upto", "first_step", "heap", "next_at")

    def __init__(self, accounts: dict[str, Account]) -> None:
        #: The pool's accounts, whose waiters a sweep looks at.
        self.accounts = accounts
        self.heap: list[tuple[float, int, int, Waiter]] = []
        #: Requests that arrived by this time have their first priority change queued.
        self.aged_upto = -math.inf
        #: How long after its arrival a fresh waiter's priority first changes.
        self.first_step = math.inf
        #: No priority change (or sweep) is due before this: a lower bound, made exact by
        #: ``pop_due`` and ``due``.
        self.next_at = math.inf

    def __len__(self) -> int:
        """Entries held, live and dead."""
        return len(self.heap)

    def push(self, at: float, w: Waiter) -> None:
        """``w``'s priority changes at ``at``."""
        heapq.heappush(self.heap, (at, w.seq, w.epoch, w))
        if at < self.next_at:
            self.next_at = at

    def next_change(self, queued: int) -> float | None:
        """The earliest pending change or sweep (stale entries are dropped).

        ``queued``: how many requests wait in the pool (a sweep is due only then).
        """
        heap = self.heap
        while heap and not _live(heap[0]):
            heapq.heappop(heap)
        first = heap[0][0] if heap else None
        if queued and self.first_step != math.inf:
            sweep = self.aged_upto + self.first_step
            if first is None or sweep < first:
                return sweep
        return first

    def due(self, now: float, queued: int) -> bool:
        """Is a change (or a sweep) due by ``now``?"""
        if self.next_at > now:
            return False
        at = self._reset(queued)
        return at is not None and at <= now

    def _reset(self, queued: int) -> float | None:
        """Make ``next_at`` exact again; returns the next change (``None``: none)."""
        at = self.next_change(queued)
        self.next_at = math.inf if at is None else at
        return at

    def pop_due(self, now: float, queued: int) -> list[Waiter]:
        """Live waiters whose priority changes by ``now`` (their entries are consumed).

        Sweeps first when one is due.  The caller re-indexes the waiters, which
        pushes their next changes (lowering ``next_at``); ``next_at`` is set to
        what remains first.
        """
        step = self.first_step
        if step != math.inf and self.aged_upto + step <= now:
            self._sweep(now, step)
        due: list[Waiter] = []
        heap = self.heap
        while heap and heap[0][0] <= now:
            aged = heapq.heappop(heap)
            if _live(aged):
                due.append(aged[3])
        self._reset(queued)
        return due

    def _sweep(self, now: float, step: float) -> None:
        """Queue the first change of requests that arrived since the last sweep.

        Covers arrivals up to ``now - step / 2``; the next sweep is due half a step
        from now, before any later arrival's first change.  (A request re-indexed
        in between has its own entry too: the first to come re-indexes it, which
        makes the other stale.)
        """
        since, upto = self.aged_upto, now - step / 2
        heap = self.heap
        for a in self.accounts.values():
            for w in a.waiters:
                at = w.enqueued_at
                if since < at <= upto and w.state == QUEUED:
                    heapq.heappush(heap, (at + step, w.seq, w.epoch, w))
        self.aged_upto = upto

    def compact(self) -> None:
        """Drop every stale entry."""
        self.heap[:] = [e for e in self.heap if _live(e)]
        heapq.heapify(self.heap)


def _live(entry: tuple[float, int, int, Waiter]) -> bool:
    """An entry is live while its waiter is queued in that wait, not re-indexed since."""
    w = entry[3]
    return entry[2] == w.epoch and entry[1] == w.seq and w.state == QUEUED
