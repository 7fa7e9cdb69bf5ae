"""Leases: what one grant holds, and the one expiry queue for all of them (R5.4).

A :class:`Lease` is ``(id, holder, pool, amounts, expires_at)``.  Its id is an
unguessable random string (``secrets.token_urlsafe``): holding the id is what
lets a caller renew, settle or release it.  :class:`LeaseTable` indexes the
live leases by id and keeps one queue of expiry deadlines with lazy deletion
(a renewed or ended lease leaves a stale entry that is skipped later; the
queue is purged when stale entries dominate).  There are
no per-lease timers: the allocator's one servicing coroutine pops what is due.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

__all__ = ["LEASE_IDS", "Lease", "LeaseTable", "new_lease_id"]

#: Characters per lease id: 22 url-safe base64 characters carry 132 random bits.
_ID_CHARS = 22
_BATCH_BYTES = 16 * 256
#: Ready-made ids, cut from one batch of random bytes; the allocator pops from it inline.
LEASE_IDS: list[str] = []


def new_lease_id() -> str:
    """A fresh unguessable id (132 random bits from :func:`secrets.token_urlsafe`).

    Random bytes are drawn in batches (one system call per ~250 ids) and cut
    into ids; each id is still uniformly random and never reused.
    """
    if not LEASE_IDS:
        batch = secrets.token_urlsafe(_BATCH_BYTES)
        LEASE_IDS.extend(
            batch[i:i + _ID_CHARS] for i in range(0, len(batch) - _ID_CHARS + 1, _ID_CHARS))
    return LEASE_IDS.pop()


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
    """Live leases by id, with one lazily cleaned expiry queue.

    Every lease lives for the same TTL from its grant or last renewal, so
    deadlines arrive in the order leases were granted or renewed: the expiry
    "heap" is a FIFO (a renewal appends a new entry; the old one turns stale).
    That makes adding O(1); stale entries are skipped when they reach the
    front and purged when they outnumber live leases.
    """

    __slots__ = ("_leases", "_queue")

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._queue: deque[tuple[float, Lease]] = deque()

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def get(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def of_holder(self, holder: str) -> list[Lease]:
        """The holder's live leases (a scan: crashes and victims are rare)."""
        return [lease for lease in self._leases.values() if lease.holder == holder]

    def all(self) -> list[Lease]:
        return list(self._leases.values())

    def add(self, lease: Lease) -> None:
        self._leases[lease.id] = lease
        queue = self._queue
        if queue and lease.expires_at >= queue[-1][0]:
            queue.append((lease.expires_at, lease))
            # Leases mostly end in grant order: drop ended ones from the front as we go.
            while not queue[0][1].active:
                queue.popleft()
            if len(queue) > 64 and len(queue) > 3 * len(self._leases):
                self._queue = deque(
                    e for e in queue if e[1].active and e[1].expires_at == e[0])
        else:
            self._push(lease)

    def remove(self, lease: Lease) -> None:
        """Forget ``lease`` (its queue entry turns stale)."""
        lease.active = False
        del self._leases[lease.id]

    def renew(self, lease: Lease, expires_at: float) -> None:
        lease.expires_at = expires_at
        self._push(lease)

    def next_expiry(self) -> float | None:
        """The earliest live deadline (stale entries are dropped on the way)."""
        queue = self._queue
        while queue:
            at, lease = queue[0]
            if lease.active and lease.expires_at == at:
                return at
            queue.popleft()
        return None

    def pop_expired(self, now: float) -> list[Lease]:
        """Remove and return every live lease whose deadline is ``<= now``."""
        due: list[Lease] = []
        while True:
            at = self.next_expiry()
            if at is None or at > now:
                return due
            _, lease = self._queue.popleft()
            self.remove(lease)
            due.append(lease)

    def _push(self, lease: Lease) -> None:
        queue = self._queue
        if queue and lease.expires_at < queue[-1][0]:
            # Out of order (a shorter TTL): rebuild sorted, rare by construction.
            entries = [*queue, (lease.expires_at, lease)]
            entries.sort(key=lambda e: e[0])
            self._queue = deque(entries)
            return
        queue.append((lease.expires_at, lease))
        if len(queue) > 64 and len(queue) > 3 * len(self._leases):
            self._queue = deque(
                e for e in queue if e[1].active and e[1].expires_at == e[0])
