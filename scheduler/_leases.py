"""Leases: what one grant holds, and the one expiry heap for all of them (R5.4).

A :class:`Lease` is ``(id, holder, pool, amounts, expires_at)``.  Its id is an
unguessable random string (``secrets.token_urlsafe``): holding the id is what
lets a caller renew, settle or release it.  :class:`LeaseTable` indexes the
live leases by id and by holder and keeps one heap of expiry deadlines with
lazy deletion (a renewed or ended lease leaves a stale heap entry that is
skipped later; the heap is rebuilt when stale entries dominate).  There are
no per-lease timers: the allocator's one servicing coroutine pops what is due.
"""

from __future__ import annotations

import heapq
import secrets
from dataclasses import dataclass

__all__ = ["Lease", "LeaseTable", "new_lease_id"]

#: Characters per lease id: 22 url-safe base64 characters carry 132 random bits.
_ID_CHARS = 22
_BATCH_BYTES = 16 * 256
_id_buffer = ""
_id_pos = 0


def new_lease_id() -> str:
    """A fresh unguessable id (132 random bits from :func:`secrets.token_urlsafe`).

    Random bytes are drawn in batches (one system call per ~250 ids) and cut
    into ids; each id is still uniformly random and never reused.
    """
    global _id_buffer, _id_pos
    end = _id_pos + _ID_CHARS
    if end > len(_id_buffer):
        _id_buffer = secrets.token_urlsafe(_BATCH_BYTES)
        _id_pos, end = 0, _ID_CHARS
    lease_id = _id_buffer[_id_pos:end]
    _id_pos = end
    return lease_id


@dataclass(slots=True, eq=False)
class Lease:
    """A grant of ``tokens`` and ``calls`` from ``pool`` to ``holder`` until ``expires_at``.

    ``requested_tokens`` is what was asked for: a request above the pool's max
    share is granted at most the max share (``tokens`` ≤ ``requested_tokens``).
    ``expires_at`` is on the event loop's clock and moves on :meth:`renew`.
    Treat a lease as read-only; the allocator owns its fields.
    """

    id: str
    holder: str
    pool: str
    tokens: int
    calls: int
    requested_tokens: int
    granted_at: float
    expires_at: float
    #: Service charged to the holder's counter at grant (adjusted at settle).
    charged: float = 0.0
    active: bool = True


class LeaseTable:
    """Live leases by id and by holder, with one lazily cleaned expiry heap."""

    __slots__ = ("_by_holder", "_heap", "_leases")

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._by_holder: dict[str, dict[str, Lease]] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def get(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def of_holder(self, holder: str) -> list[Lease]:
        """The holder's live leases (a copy)."""
        return list(self._by_holder.get(holder, {}).values())

    def count_of(self, holder: str) -> int:
        return len(self._by_holder.get(holder, ()))

    def all(self) -> list[Lease]:
        return list(self._leases.values())

    def add(self, lease: Lease) -> None:
        self._leases[lease.id] = lease
        held = self._by_holder.get(lease.holder)
        if held is None:
            held = self._by_holder[lease.holder] = {}
        held[lease.id] = lease
        heapq.heappush(self._heap, (lease.expires_at, lease.id))
        self._maybe_compact()

    def remove(self, lease: Lease) -> None:
        """Forget ``lease`` (its heap entry turns stale)."""
        lease.active = False
        del self._leases[lease.id]
        held = self._by_holder[lease.holder]
        del held[lease.id]
        if not held:
            del self._by_holder[lease.holder]

    def renew(self, lease: Lease, expires_at: float) -> None:
        lease.expires_at = expires_at
        heapq.heappush(self._heap, (expires_at, lease.id))
        self._maybe_compact()

    def next_expiry(self) -> float | None:
        """The earliest live deadline (stale heap entries are dropped on the way)."""
        heap = self._heap
        while heap:
            at, lease_id = heap[0]
            lease = self._leases.get(lease_id)
            if lease is not None and lease.expires_at == at:
                return at
            heapq.heappop(heap)
        return None

    def pop_expired(self, now: float) -> list[Lease]:
        """Remove and return every live lease whose deadline is ``<= now``."""
        due: list[Lease] = []
        while True:
            at = self.next_expiry()
            if at is None or at > now:
                return due
            _, lease_id = heapq.heappop(self._heap)
            lease = self._leases[lease_id]
            self.remove(lease)
            due.append(lease)

    def _maybe_compact(self) -> None:
        # Rebuild when stale entries outnumber live ones 2:1 (amortised O(1)).
        if len(self._heap) > 64 and len(self._heap) > 3 * len(self._leases):
            self._heap = [
                (lease.expires_at, lease.id) for lease in self._leases.values()
            ]
            heapq.heapify(self._heap)
