"""A queue in bands: lowest band first, first come first served within a band.

Private to the allocator's wait queue.  Entries are keys (floats carrying
their waiter, see :class:`Key`), or a waiter record queued as its own
entry, keyed by its service counter (the allocator's common case: no entry
object per request; see ``Waiter.w``); an entry's band is ``key // quantum``,
so entries whose keys lie within one quantum of each other are served in
arrival order, and a lower band always goes before a higher one.  This is the
bucketed fair queue of deficit round robin and calendar queues rather than an
exact binary heap: with the service counter as the key, whoever is served
first is within one quantum of the least served, and a push or a pop costs
O(1) (an append or popleft on the band's deque, plus O(log b) over the b
bands when a band opens or empties).  Unlike a binary heap over every waiter,
a pop does not walk a path of entries scattered in memory, which at 10 000
waiters costs a cache miss per step.

Within a band the order is arrival order (the waiter's ``seq``): new
requests arrive in that order and are appended; an entry pushed behind a later
arrival (a waiter re-indexed by aging, demotion or a new service counter) goes
to the band's small ``late`` heap by ``seq`` instead, and the band's head is
the earlier of the two fronts.

A quantum of 0 makes the order exact (one band per distinct key), for keys
that have no natural unit; a quantum of ``inf`` makes one queue in arrival
order (keys ``>= 0``).

Entries are deleted lazily: an entry is live while its waiter still points at
it (``by_service``: ``waiter.centry``, while the waiter is queued; otherwise
``waiter.entry``).  :meth:`head` drops dead entries from the front;
:meth:`compact` purges the rest.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias

    from scheduler.allocator._records import Waiter

__all__ = ["BandQueue", "Key", "key"]


class Key(float):
    """A queue entry: its key as a float, carrying the waiter it was made for."""

    __slots__ = ("w",)
    w: Waiter


def key(rank: float, w: Waiter) -> Key:
    """A new entry for ``w`` ranked ``rank``."""
    k = Key(rank)
    k.w = w
    return k


if TYPE_CHECKING:
    #: A queue entry: a ``Key``, or a waiter that is its own entry (keyed by its counter).
    Entry: TypeAlias = Key | Waiter


class BandQueue:
    """Keys in bands of ``quantum``: the lowest band first, arrival order within a band."""

    #: Slots: the allocator's hot path reads ``first``, ``first_late`` and ``bands`` inline.
    __slots__ = ("bands", "by_service", "first", "first_late", "late", "order", "quantum")

    def __init__(self, quantum: float, *, by_service: bool = False) -> None:
        if not quantum >= 0:
            raise ValueError(f"a band quantum must be >= 0, got {quantum!r}")
        self.quantum = quantum
        #: Liveness by ``waiter.centry`` (the queues by service) or ``waiter.entry``.
        self.by_service = by_service
        #: Entries of each band in arrival order, by band number.
        self.bands: dict[float, deque[Entry]] = {}
        #: Entries pushed behind a later arrival, per band: heaps of ``(seq, entry)``.
        self.late: dict[float, list[tuple[int, Entry]]] = {}
        #: Band numbers (a binary heap): ``order[0]`` is the lowest band.
        self.order: list[float] = []
        #: The lowest band's entries (``None`` when there is no band), and its late heap.
        self.first: deque[Entry] | None = None
        self.first_late: list[tuple[int, Entry]] | None = None

    def band(self, key: float) -> float:
        """The band number of ``key``."""
        q = self.quantum
        return key // q if q else float(key)

    def push(self, entry: Entry) -> None:
        """Add ``entry`` to its band, in arrival order (``entry.w.seq``)."""
        w = entry.w
        k: float = w.counter if entry is w else entry  # type: ignore[assignment]
        q = self.quantum
        b = k // q if q else float(k)  # self.band(k), inline: a push per background request
        d = self.bands.get(b)
        if d is None:
            d = self.new_band(b)
        seq = w.seq
        if not d or d[-1].w.seq < seq:
            d.append(entry)  # the latest arrival: the allocator's inline push does just this
            return
        late = self.late.get(b)
        if late is None:
            late = self.late[b] = []
            if d is self.first:
                self.first_late = late
        heapq.heappush(late, (seq, entry))

    def new_band(self, b: float) -> deque[Entry]:
        """Open band ``b`` (the allocator's inline push calls this for a missing band)."""
        d: deque[Entry] = deque()
        self.bands[b] = d
        order = self.order
        heapq.heappush(order, b)
        if order[0] == b:
            self.first = d
            self.first_late = None
        return d

    def _live(self, entry: Entry) -> bool:
        w = entry.w
        if self.by_service:
            return w.centry is entry and w.entry is not None
        return w.entry is entry

    def head(self) -> Waiter | None:
        """The first live waiter (dead entries and empty bands in front are dropped)."""
        live = self._live
        while (d := self.first) is not None:
            while d and not live(d[0]):
                d.popleft()
            late = self.first_late
            if late:
                while late and not live(late[0][1]):
                    heapq.heappop(late)
                if late and (not d or late[0][0] < d[0].w.seq):
                    return late[0][1].w
            if d:
                return d[0].w
            self._drop_first()
        return None

    def _drop_first(self) -> None:
        """Close the (empty) lowest band; the next band becomes the first."""
        order = self.order
        b = heapq.heappop(order)
        del self.bands[b]
        self.late.pop(b, None)
        if order:
            b = order[0]
            self.first = self.bands[b]
            self.first_late = self.late.get(b)
        else:
            self.first = self.first_late = None

    def low(self) -> float:
        """The lowest band's lower edge: every key here is at least this (``inf``: empty)."""
        if not self.order:
            return math.inf
        b = self.order[0]
        return b * self.quantum if self.quantum else b

    @property
    def entries(self) -> int:
        """Entries held, live and dead."""
        return sum(map(len, self.bands.values())) + sum(map(len, self.late.values()))

    def compact(self) -> None:
        """Drop every dead entry, keeping the order of the live ones."""
        live = self._live
        kept = [(b, e.w.seq, e) for b, d in self.bands.items() for e in d if live(e)]
        kept += [(b, seq, e) for b, h in self.late.items() for seq, e in h if live(e)]
        kept.sort(key=lambda item: (item[0], item[1]))
        self.bands.clear()
        self.late.clear()
        self.order.clear()
        self.first = self.first_late = None
        for _, _, entry in kept:
            self.push(entry)
