"""Pool internals of the allocator: capacities, waiter records and queue indexes.

Private to :mod:`scheduler._allocator`.  A pool has up to three capacities:
tokens per minute and requests per minute (refilling buckets) and concurrent
calls (slots held until a lease ends).  Its waiters are indexed by several
binary heaps with lazy deletion: an entry ``(key, seq, epoch, waiter)`` is
live only while the waiter is queued and its ``epoch`` matches, so moving a
waiter (aging, demotion) just pushes new entries and bumps the epoch.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from policies.fairness import WaiterView

from ._config import PoolConfig
from ._leases import Lease

QUEUED, PARKED, GRANTED, GONE = 0, 1, 2, 3
#: The shortest wait for a bucket refill (see :meth:`Pool.refill_time`).
_MIN_REFILL_WAIT_S = 1e-6

#: A heap entry: (key, seq, epoch, waiter).
Entry = tuple[float, int, int, "Waiter"]


@dataclass(slots=True, eq=False)
class Waiter(WaiterView):
    """One waiting request: what the policy sees, plus the allocator's bookkeeping."""

    pool: str = ""
    calls: int = 1
    requested: int = 0
    background: bool = False
    state: int = QUEUED
    epoch: int = 0
    level: int = 0
    event: Any = None
    lease: Lease | None = None
    error: BaseException | None = None
    owner: Holder | None = None
    next_change: float = math.inf


@dataclass(slots=True)
class Holder:
    """Per-holder (task) state shared by all pools."""

    id: str
    base_priority: int
    background: bool
    token_fraction: float = 0.0
    blocking: bool = False
    waiting: set[Waiter] = field(default_factory=set)


@dataclass(slots=True)
class Bucket:
    """A per-minute capacity refilling continuously; the level may go negative (debt)."""

    capacity: float
    level: float
    last: float | None = None

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> float:
        last = self.last
        if last is not None and now > last and self.level < self.capacity:
            self.level = min(self.capacity, self.level + (now - last) * self.capacity / 60.0)
        self.last = now
        return self.level

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def time_to(self, amount: float) -> float:
        """Seconds until the level reaches ``amount`` (0 when it already has)."""
        short = amount - self.level
        if short <= 0:
            return 0.0
        return short / self.rate if self.rate > 0 else math.inf  # a closed pool never refills


def _share(capacity: float | None, max_share: float) -> int | None:
    if capacity is None or capacity == 0:  # unlimited, or closed: requests keep their size
        return None
    return max(1, math.floor(capacity * max_share))


class Pool:
    """Capacities, holdings and the waiting queue of one provider / model group."""

    def __init__(
        self, name: str, config: PoolConfig, max_share: float, window_s: float = 60.0,
        *, track_fair: bool = True,
    ) -> None:
        self.name = name
        #: Keep a heap by service counter.  Not needed when the policy ranks by the counter:
        #: then the head of each priority level is already that level's least served.
        self.track_fair = track_fair
        self.max_share_fraction = max_share
        self.tpm: Bucket | None = None
        self.rpm: Bucket | None = None
        self.concurrent: int | None = None
        self.max_tokens: int | None = None
        self.max_calls: int | None = None
        self.in_use = 0
        self.set_capacity(config.tokens_per_minute, config.requests_per_minute, config.concurrent)
        # Holdings and service per holder.
        self.held_tokens: dict[str, int] = {}
        self.held_calls: dict[str, int] = {}
        self.counters: dict[str, float] = {}
        # Waiting queue.
        #: The policy's order: one heap per priority level of (rank, seq, epoch, waiter).
        self.levels: dict[int, list[Entry]] = {}
        self.level_order: list[int] = []
        #: Least service first: (counter, seq, epoch, waiter); ``bg`` the same for background.
        self.fair: list[Entry] = []
        self.bg: list[Entry] = []
        self.aging: list[Entry] = []
        self.arrivals: deque[Waiter] = deque()
        self.entries = 0
        self.n_queued = 0
        self.n_bg_queued = 0
        self.waiting_by_holder: dict[str, int] = {}
        self.parked: dict[str, list[Waiter]] = {}
        self.n_parked = 0
        self.refill_at: float | None = None
        # Decayed service window for class shares, and statistics.
        self.recent_all = 0.0
        self.recent_bg = 0.0
        self.recent_at = -math.inf
        #: Decay the share window in steps of 1/16 of it (cheap on the hot path).
        self.decay_step = window_s * 0.0625
        self.avg_hold_s = 0.0
        self.ended = 0
        self.n_leases = 0
        self.grants = 0
        self.expired = 0
        self.share_guard_grants = 0

    # -- capacity ---------------------------------------------------------------------------
    def set_capacity(self, tpm: int | None, rpm: int | None, concurrent: int | None) -> None:
        self.tpm = _resize(self.tpm, tpm)
        self.rpm = _resize(self.rpm, rpm)
        self.concurrent = concurrent
        self.max_tokens = _share(tpm, self.max_share_fraction)
        self.max_calls = _share(concurrent, self.max_share_fraction)

    def clamp(self, tokens: int, calls: int) -> tuple[int, int]:
        """A request above the max share is cut to the max share (R5.5)."""
        if self.max_tokens is not None and tokens > self.max_tokens:
            tokens = self.max_tokens
        if self.max_calls is not None and calls > self.max_calls:
            calls = self.max_calls
        return tokens, calls

    def fits(self, tokens: int, calls: int, now: float) -> bool:
        if self.concurrent is not None and self.in_use + calls > self.concurrent:
            return False
        tpm = self.tpm
        if tpm is not None and tpm.refill(now) < tokens:
            return False
        rpm = self.rpm
        return rpm is None or rpm.refill(now) >= calls

    def refill_time(self, tokens: int, calls: int, now: float) -> float | None:
        """When the buckets will hold ``tokens``/``calls`` (``None``: they already do)."""
        wait = 0.0
        if self.tpm is not None:
            wait = max(wait, self.tpm.time_to(tokens))
        if self.rpm is not None:
            wait = max(wait, self.rpm.time_to(calls))
        if wait <= 0:
            return None
        # never "now" again: a level short by a rounding error (1010.9999… of 1011) would
        # otherwise wake the servicing task at the same instant forever
        return now + max(wait, _MIN_REFILL_WAIT_S)

    def over_share(self, holder: str, tokens: int, calls: int) -> bool:
        """Would this grant take ``holder`` past the max share of some dimension?"""
        mt = self.max_tokens
        if mt is not None and self.held_tokens.get(holder, 0) + tokens > mt:
            return True
        mc = self.max_calls
        return mc is not None and self.held_calls.get(holder, 0) + calls > mc

    def others_waiting(self, holder: str) -> bool:
        return self.n_queued + self.n_parked - self.waiting_by_holder.get(holder, 0) > 0

    # -- class share window -----------------------------------------------------------------
    def decay(self, now: float, window_s: float) -> None:
        """Age the class-share window (callers do it once per ``decay_step``)."""
        f = math.exp((self.recent_at - now) / window_s)
        self.recent_all *= f
        self.recent_bg *= f
        self.recent_at = now

    # -- heaps ------------------------------------------------------------------------------
    def index(self, w: Waiter, level: int, rank: float) -> None:
        """Push fresh entries for ``w`` (its older entries turn stale by epoch)."""
        seq, epoch, counter = w.seq, w.epoch, w.counter
        heap = self.levels.get(level)
        if heap is None:
            heap = self.levels[level] = []
            self.level_order = sorted(self.levels, reverse=True)
        heapq.heappush(heap, (rank, seq, epoch, w))
        self.entries += 1
        if self.track_fair:
            heapq.heappush(self.fair, (counter, seq, epoch, w))
            self.entries += 1
        if w.background:
            heapq.heappush(self.bg, (counter, seq, epoch, w))
            self.entries += 1

    def head(self, heap: list[Any]) -> Waiter | None:
        """The first live waiter of ``heap`` (stale entries are dropped)."""
        while heap:
            entry = heap[0]
            w: Waiter = entry[-1]
            if w.state == QUEUED and entry[-2] == w.epoch:
                return w
            heapq.heappop(heap)
            self.entries -= 1
        return None

    def top(self) -> Waiter | None:
        """The policy's first choice: the head of the highest non-empty level."""
        levels = self.levels
        for level in self.level_order:
            w = self.head(levels[level])
            if w is not None:
                return w
        return None

    def least(self) -> Waiter | None:
        """The queued waiter with the smallest service counter."""
        if self.track_fair:
            return self.head(self.fair)
        best: Waiter | None = None
        levels = self.levels
        for level in self.level_order:
            w = self.head(levels[level])
            if w is not None and (best is None or w.counter < best.counter):
                best = w
        return best

    # -- priority changes (aging) ----------------------------------------------------------
    # A fresh waiter's first change (``next_change``) comes in arrival order for aging, so
    # fresh waiters sit in a FIFO; any later change of a re-indexed waiter goes to a heap.
    def add_arrival(self, w: Waiter) -> bool:
        """Track ``w``'s first priority change; True when it is now the earliest one."""
        q = self.arrivals
        while q and not _fresh(q[0]):
            q.popleft()
        q.append(w)
        if len(q) > 2 * self.n_queued + 64:
            self.arrivals = deque(x for x in q if _fresh(x))
        return len(self.arrivals) == 1

    def push_change(self, at: float, w: Waiter) -> None:
        heapq.heappush(self.aging, (at, w.seq, w.epoch, w))
        self.entries += 1

    def next_change(self) -> float | None:
        """The earliest pending priority change (stale entries are dropped)."""
        q, heap = self.arrivals, self.aging
        while q and not _fresh(q[0]):
            q.popleft()
        while heap and not _live(heap[0]):
            heapq.heappop(heap)
            self.entries -= 1
        first = q[0].next_change if q else None
        if heap and (first is None or heap[0][0] < first):
            return heap[0][0]
        return first

    def changes_due(self, now: float) -> bool:
        q, heap = self.arrivals, self.aging
        return bool((q and q[0].next_change <= now) or (heap and heap[0][0] <= now))

    def pop_changed(self, now: float) -> list[Waiter]:
        """Live waiters whose priority changes by ``now`` (their entries are consumed)."""
        due: list[Waiter] = []
        q, heap = self.arrivals, self.aging
        while q and q[0].next_change <= now:
            w = q.popleft()
            if _fresh(w):
                due.append(w)
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            self.entries -= 1
            if _live(entry):
                due.append(entry[3])
        return due

    # -- waiter bookkeeping -------------------------------------------------------------------
    def park(self, w: Waiter) -> None:
        """Set a request of an over-share holder aside until one of its leases ends."""
        w.state = PARKED
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
        """Take a queued or parked waiter out of the pool's counts."""
        hid = w.holder
        if w.state == PARKED:
            ws = self.parked[hid]
            ws.remove(w)
            if not ws:
                del self.parked[hid]
            self.n_parked -= 1
        else:
            self.n_queued -= 1
            if w.background:
                self.n_bg_queued -= 1
        n = self.waiting_by_holder[hid] - 1
        if n:
            self.waiting_by_holder[hid] = n
        else:
            del self.waiting_by_holder[hid]
        if w.owner is not None:
            w.owner.waiting.discard(w)

    def maybe_compact(self) -> None:
        """Rebuild the heaps when stale entries dominate (amortised O(1) per push)."""
        if self.entries <= 64 + 8 * self.n_queued:
            return
        total = 0
        heaps: tuple[list[Any], ...] = (*self.levels.values(), self.fair, self.bg, self.aging)
        for heap in heaps:
            live = [e for e in heap if e[-1].state == QUEUED and e[-2] == e[-1].epoch]
            heapq.heapify(live)
            heap[:] = live
            total += len(live)
        self.entries = total


def _fresh(w: Waiter) -> bool:
    """Still queued and never re-indexed: its first change is tracked in the FIFO."""
    return w.state == QUEUED and w.epoch == 1


def _live(entry: Any) -> bool:
    w: Waiter = entry[-1]
    return w.state == QUEUED and entry[-2] == w.epoch


def _resize(bucket: Bucket | None, capacity: int | None) -> Bucket | None:
    if capacity is None:
        return None
    if bucket is None:
        return Bucket(float(capacity), float(capacity))
    bucket.capacity = float(capacity)
    bucket.level = min(bucket.level, bucket.capacity)
    return bucket
