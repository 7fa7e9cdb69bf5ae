"""Leases: what one grant holds, and the expiry order of all of them (R5.4).

A :class:`Lease` is ``(id, holder, pool, amounts, expires_at)``.  Its id is an
unguessable random string (128 random bits): holding the id is what lets a
caller renew, settle or release it.  :class:`LeaseTable` indexes the live
leases by id, and that one dictionary is also the expiry queue: every lease
lives for the same TTL from its grant or last renewal, so deadlines come in
the order leases are granted or renewed, which is the dictionary's insertion
order when a renewal re-inserts its lease.  There are no per-lease timers and
no queue entries: the allocator's one servicing coroutine pops what is due
from the front.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LEASE_IDS", "Lease", "LeaseTable", "new_lease_id"]

#: Random bytes per lease id (32 hex digits, 128 bits), and ids drawn per batch.
_ID_BYTES = 16
_BATCH = 256
#: Ready-made ids, cut from one batch of random bytes; the allocator pops from it inline.
LEASE_IDS: list[str] = []


def new_lease_id() -> str:
    """A fresh unguessable id (128 random bits from :func:`secrets.token_bytes`, in hex).

    Random bytes are drawn in batches (one system call per 256 ids) and cut
    into ids (a space every 16 bytes of hex, then split); each id is still
    uniformly random and never reused.
    """
    if not LEASE_IDS:
        LEASE_IDS.extend(secrets.token_bytes(_ID_BYTES * _BATCH).hex(" ", _ID_BYTES).split())
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
    tokens: int
    calls: int
    requested_tokens: int
    granted_at: float
    #: The lease's lifetime from its grant, until a renewal sets ``_deadline`` (one float
    #: object less per grant: the allocator's TTL is shared by every lease).
    _ttl: float
    #: Service charged to the holder's counter at grant (adjusted at settle).
    charged: float = 0.0
    active: bool = True
    #: The allocator's account of the holder in the pool (internal): it knows both.
    _account: Any = field(default=None, repr=False, compare=False)
    #: The deadline set by the latest renewal (``None``: ``granted_at + _ttl``).
    _deadline: float | None = field(default=None, repr=False, compare=False)

    @property
    def expires_at(self) -> float:
        """When the lease expires, on the event loop's clock (moves on renewal)."""
        deadline = self._deadline
        return self.granted_at + self._ttl if deadline is None else deadline

    @property
    def holder(self) -> str:
        """The task holding this lease."""
        return str(self._account.holder.id)

    @property
    def pool(self) -> str:
        """The pool the lease is on."""
        return str(self._account.pool.name)

    def __repr__(self) -> str:
        return (f"Lease(holder={self.holder!r}, pool={self.pool!r}, tokens={self.tokens}, "
                f"calls={self.calls}, expires_at={self.expires_at:.3f}, active={self.active})")


class LeaseTable:
    """Live leases by id, in deadline order.

    The dictionary's insertion order is the expiry order: a grant appends, a
    renewal moves its lease to the end (same TTL, later start), an end deletes.
    So the earliest deadline is the first entry, and the hot path touches one
    dictionary per grant and one per end.  (An injected clock that ran
    backwards could put a later deadline in front; the leases behind it would
    then expire late, never be lost.)
    """

    __slots__ = ("by_id",)

    def __init__(self) -> None:
        #: Live leases by id, in deadline order.  The allocator's hot path reads it
        #: directly; never replaced.
        self.by_id: dict[str, Lease] = {}

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

    def remove(self, lease: Lease) -> None:
        """Forget ``lease``."""
        lease.active = False
        del self.by_id[lease.id]

    def renew(self, lease: Lease, expires_at: float) -> None:
        """Move the lease's deadline to ``expires_at`` (the latest so far): to the end."""
        lease._deadline = expires_at
        by_id = self.by_id
        del by_id[lease.id]
        by_id[lease.id] = lease

    def next_expiry(self) -> float | None:
        """The earliest live deadline."""
        for lease in self.by_id.values():
            return lease.expires_at
        return None

    def pop_expired(self, now: float) -> list[Lease]:
        """Remove and return every live lease whose deadline is ``<= now``."""
        due: list[Lease] = []
        for lease in self.by_id.values():
            if lease.expires_at > now:
                break
            due.append(lease)
        for lease in due:
            self.remove(lease)
        return due
