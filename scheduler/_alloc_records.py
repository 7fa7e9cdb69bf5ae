"""The allocator's bookkeeping records: holders, per-pool accounts and waiting requests.

Private to the allocator.  A :class:`Holder` is one task (its class and the
inputs of its dynamic priority); an :class:`Account` is what a holder has in
one pool (its VTC service counter, what it holds, what it waits for), so the
hot path reads attributes of one record instead of looking a holder up in
several dictionaries; a :class:`Waiter` is one waiting request, the data a
policy sees plus the allocator's queue state.

A waiter record is reused for the holder's next wait in the same pool (see
:attr:`Account.spare`): fewer allocations per request means fewer objects for
the garbage collector to promote, the main cost at 10 000 waiters.  Reuse is
safe because every index entry carries the ``epoch`` (or ``seq``) it was made
for, and both only grow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from policies.fairness import WaiterView

from ._leases import Lease

__all__ = ["GONE", "GRANTED", "PARKED", "QUEUED", "Account", "Holder", "Waiter"]

#: Waiter states.  ``GONE``: withdrawn or cancelled.
QUEUED, PARKED, GRANTED, GONE = 0, 1, 2, 3


@dataclass(slots=True, eq=False)
class Waiter(WaiterView):
    """One waiting request: what the policy sees, plus the allocator's bookkeeping."""

    pool: str = ""
    calls: int = 1
    requested: int = 0
    background: bool = False
    state: int = QUEUED
    #: Bumped at every (re)indexing; an index entry is live only while it matches.
    epoch: int = 0
    level: int = 0
    #: What the waiting coroutine parks on (a loop future or an anyio Event).
    event: Any = None
    lease: Lease | None = None
    error: BaseException | None = None
    account: Account | None = None
    #: Linked in the pool's arrival list until its first priority change (or its grant).
    fresh: bool = False
    #: Neighbours in the arrival list (``None`` whenever the record is not linked).
    older: Waiter | None = field(default=None, repr=False)
    newer: Waiter | None = field(default=None, repr=False)


@dataclass(slots=True, eq=False)
class Account:
    """What one holder has in one pool: service counter, holdings and waits."""

    holder: Holder
    #: VTC virtual service counter (tokens, outputs weighted).
    counter: float = 0.0
    held_tokens: int = 0
    held_calls: int = 0
    #: Queued plus parked requests.
    waiters: list[Waiter] = field(default_factory=list)
    #: A finished waiter record, ready for the holder's next wait here.
    spare: Waiter | None = None
    #: The pool this account is in (a ``Pool``; typed loosely to keep this module leaf).
    pool: Any = None

    @property
    def id(self) -> str:
        return self.holder.id

    @property
    def waiting(self) -> int:
        """How many requests of this holder wait here (queued or parked)."""
        return len(self.waiters)


@dataclass(slots=True, eq=False)
class Holder:
    """Per-holder (task) state shared by all pools."""

    id: str
    base_priority: int
    background: bool
    token_fraction: float = 0.0
    blocking: bool = False
    #: The policy's priority for a request enqueued now (``None``: ask per request).
    level0: int | None = None
    accounts: dict[str, Account] = field(default_factory=dict)

    @property
    def waiting(self) -> list[Waiter]:
        """Every queued or parked request of this holder, in all pools."""
        return [w for a in self.accounts.values() for w in a.waiters]
