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
safe because an index entry is live only while the record points at it
(``entry`` / ``centry``), and an aging entry carries the ``seq`` and ``epoch``
it was made for, which only grow.  A record queued as its own entry (see
:attr:`Waiter.w`) would come back to life in a queue that still holds it, so
it is reused only when its grant took it out of every queue it was in
(:attr:`Waiter.self_queued`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from policies.fairness import WaiterView
from scheduler.allocator._leases import Lease

__all__ = ["GONE", "GRANTED", "PARKED", "QUEUED", "Account", "Holder", "Waiter", "new_waiter"]

#: Waiter states.  ``GONE``: withdrawn or cancelled.
QUEUED, PARKED, GRANTED, GONE = 0, 1, 2, 3


@dataclass(slots=True, eq=False)
class Waiter(WaiterView):
    """One waiting request: what the policy sees, plus the allocator's bookkeeping.

    The fields a grant touches come first, so that with the policy's fields before
    them they share two cache lines (a grant reads a record last touched when its
    request was queued, long out of the CPU caches).
    """

    account: Account | None = None
    #: The record itself: a queue entry's ``w`` is its waiter, and a waiter queued in its
    #: first place needs no separate entry object (the allocator's inline push queues the
    #: record; a re-indexed waiter gets ``Key`` entries).  Stored, not a property: the
    #: grant path reads ``entry.w`` as a plain slot whichever kind the entry is.
    w: Waiter = field(init=False, repr=False, compare=False)
    #: The record is (or may still be, dead) in a queue as its own entry: not reusable.
    self_queued: bool = False
    calls: int = 1
    requested: int = 0
    state: int = QUEUED
    #: The live entry (a ``_bands.Key``, or the record itself) in its level queue;
    #: ``None`` unless queued.
    entry: Any = field(default=None, repr=False)
    #: What the waiting coroutine parks on (a loop future or an anyio Event).
    event: Any = None
    #: The live entry in the queues by service (``fair``, ``bg``), while ``entry`` is
    #: set.  (The same entry when the rank is the service counter.)
    centry: Any = field(default=None, repr=False)
    #: The grant (set on the anyio Event path, or when the future was cancelled first;
    #: otherwise the future's result holds it).
    lease: Lease | None = None
    background: bool = False
    pool: str = ""
    #: Bumped at every re-indexing; an aging entry is live only while it matches.
    epoch: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.w = self


@dataclass(slots=True, eq=False)
class Account:
    """What one holder has in one pool: service counter, holdings and waits."""

    holder: Holder
    #: VTC virtual service counter (tokens, outputs weighted).
    counter: float = 0.0
    held_tokens: int = 0
    held_calls: int = 0
    #: A queued or parked request here (usually the only one), and any others: held
    #: inline so the hot path touches no list (see :attr:`waiters`).
    waiter: Waiter | None = None
    more: list[Waiter] | None = None
    #: A finished waiter record, ready for the holder's next wait here.
    spare: Waiter | None = None
    #: The pool this account is in (a ``Pool``; typed loosely to keep this module leaf).
    pool: Any = None
    #: Copies of the holder's data the hot path reads (kept current by the allocator):
    #: its class, and with policy hints the queue of the level a new request starts at
    #: in this pool (a ``BandQueue``; ``None`` without hints).
    background: bool = False
    level: Any = None

    @property
    def id(self) -> str:
        return self.holder.id

    @property
    def waiters(self) -> list[Waiter]:
        """The holder's queued and parked requests here (a new list)."""
        w = self.waiter
        if w is None:
            return []
        return [w] if self.more is None else [w, *self.more]

    @property
    def waiting(self) -> int:
        """How many requests of this holder wait here (queued or parked)."""
        return 0 if self.waiter is None else 1 + len(self.more or ())

    def add_waiter(self, w: Waiter) -> None:
        if self.waiter is None:
            self.waiter = w
        elif self.more is None:
            self.more = [w]
        else:
            self.more.append(w)

    def remove_waiter(self, w: Waiter) -> None:
        more = self.more
        if self.waiter is w:
            self.waiter = more.pop() if more else None
        else:
            more.remove(w)  # type: ignore[union-attr] # w is one of them
        if not more:
            self.more = None


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


def new_waiter(
    a: Account, seq: int, now: float, tokens: int, calls: int, requested: int
) -> Waiter:
    """A waiter record for the account's first wait in its pool (later waits reuse it)."""
    h = a.holder
    return Waiter(h.id, seq, now, h.base_priority, tokens, h.token_fraction, h.blocking,
                  a.counter, account=a, calls=calls, requested=requested,
                  background=h.background, pool=a.pool.name)
