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
from dataclasses import dataclass, field
from typing import Any

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
    #: The allocator's account of the holder in the pool (internal: saves two lookups per end).
    _account: Any = field(default=None, repr=False, compare=False)
    #: Older copies of this lease in the expiry queue (one more per renewal; internal).
    _stale_copies: int = field(default=0, init=False, repr=False, compare=False)


class LeaseTable:
    """Live leases by id, with one lazily cleaned expiry queue.

    Every lease lives for the same TTL from its grant or last renewal, so
    deadlines arrive in the order leases were granted or renewed: the expiry
    "heap" is a FIFO of the leases themselves (no entry objects).  A renewal
    appends the lease again and counts the older copy as stale; ended leases
    and stale copies are dropped when they reach the front, and purged when
    they outnumber live leases.
    """

    __slots__ = ("by_id", "queue")

    def __init__(self) -> None:
        #: Live leases by id.  The allocator's hot path reads it directly; never replaced.
        self.by_id: dict[str, Lease] = {}
        #: Expiry order (never replaced: the allocator's hot path holds it).
        self.queue: deque[Lease] = deque()

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self.by_id

    def get(self, lease_id: str) -> Lease | None:
        return self.by_id.get(lease_id)

    def of_holder(self, holder: str) -> list[Lease]:
        """The holder's live leases (a scan: crashes and victims are rare)."""
        return [lease for lease in self.by_id.values() if lease.holder == holder]

    def all(self) -> list[Lease]:
        return list(self.by_id.values())

    def add(self, lease: Lease) -> None:
        """Index a new lease and queue its deadline."""
        self.by_id[lease.id] = lease
        queue = self.queue
        if queue and lease.expires_at < queue[-1].expires_at:
            self.compact()
            return
        queue.append(lease)
        # Leases mostly end in grant order: drop ended ones from the front as we go.
        while not queue[0].active:
            queue.popleft()
        if len(queue) > 64 and len(queue) > 3 * len(self.by_id):
            self.compact()

    def remove(self, lease: Lease) -> None:
        """Forget ``lease`` (its queue entries turn stale)."""
        lease.active = False
        del self.by_id[lease.id]

    def renew(self, lease: Lease, expires_at: float) -> None:
        lease.expires_at = expires_at
        queue = self.queue
        if queue and expires_at < queue[-1].expires_at:
            self.compact()  # out of order (the clock went back): rare by construction
            return
        lease._stale_copies += 1
        queue.append(lease)
        if len(queue) > 64 and len(queue) > 3 * len(self.by_id):
            self.compact()

    def next_expiry(self) -> float | None:
        """The earliest live deadline (ended leases and stale copies are dropped)."""
        queue = self.queue
        while queue:
            lease = queue[0]
            if lease.active and not lease._stale_copies:
                return lease.expires_at
            queue.popleft()
            if lease._stale_copies:
                lease._stale_copies -= 1
        return None

    def pop_expired(self, now: float) -> list[Lease]:
        """Remove and return every live lease whose deadline is ``<= now``."""
        due: list[Lease] = []
        while True:
            at = self.next_expiry()
            if at is None or at > now:
                return due
            lease = self.queue.popleft()
            self.remove(lease)
            due.append(lease)

    def compact(self) -> None:
        """Rebuild the queue: one copy of every live lease, in deadline order."""
        live = sorted(self.by_id.values(), key=lambda lease: lease.expires_at)
        for lease in live:
            lease._stale_copies = 0
        self.queue.clear()  # in place: the allocator's hot path holds this deque
        self.queue.extend(live)
