"""Optional store extensions for several orchestrators sharing one budget and one quota.

A store that is shared between processes can offer two more capabilities, checked
with ``isinstance`` because the protocols are ``runtime_checkable``:

* :class:`BudgetLedger` — an atomic *charge if within budget*: a hold of a
  call's estimate is placed against every shared scope at once, or against
  none, so N processes cannot all pass the same check and overspend together.
  The hold is settled (released in the same atomic step that records the
  event) or released; a hold whose process died expires after its TTL.
* :class:`SliceBackend` — leases on slices of a global pool (tokens per
  minute …) shared fairly between orchestrators; see :mod:`scheduler.allocator._quota`.

``RedisStore`` offers both.  ``SqliteStore`` is a :class:`BudgetLedger` (several
processes of one host may open one file; see :mod:`._sqlite_holds`) but no
:class:`SliceBackend`: each process on a file keeps its own provider quota.
``MemoryStore`` offers neither: it lives in one process, whose tracker reservations
already prevent overspend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from scheduler.core import Totals, UsageEvent


@dataclass(frozen=True, slots=True)
class ScopeLimit:
    """The limits a shared hold is checked against in one scope (``None`` = unlimited)."""

    scope: str
    tokens: int | None = None
    model_tokens: int | None = None
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """A granted hold of ``tokens``/``cost_usd`` against ``scopes`` (settle or release it)."""

    hold_id: str
    scopes: tuple[str, ...]
    model: str
    tokens: int
    cost_usd: float
    #: Shared totals of each scope as of the grant (every process's usage); read-only,
    #: possibly shared with other holds of the same grant (copy before adding to them).
    totals: dict[str, Totals]
    #: Tokens and cost held in flight by every process, per scope, as of the grant.
    held: dict[str, tuple[int, float]]
    #: True when granted from the local fail-open allowance while the store was down.
    local: bool = False
    #: The version of each scope's ``totals`` (see :data:`Recorded`): the tracker takes
    #: over a scope's totals only with their version (0 or missing: it does not).
    versions: Mapping[str, int] | None = None
    #: Every process's committed totals of each scope as the check read them, when the
    #: ledger does not return them as ``totals`` (SQLite): never taken over as a scope's
    #: totals, only a floor under what its alerts count (R3.1 across processes).
    fleet: Mapping[str, Totals] | None = None


#: What recording one event answers on a store that versions its totals (Redis): its
#: outcome (``store.record_and_delete_state``'s: 0 a duplicate, not charged again; 1
#: recorded; 2 recorded in place of its call's estimate) and the version each of the
#: event's scopes (:func:`~scheduler.store.scopes_of` order) reached with it -- empty
#: when not known (queued while the store is unreachable).  A scope's version counts the
#: events applied to its totals: a snapshot of the totals at version ``w`` holds every
#: event that brought them to a version up to ``w``, and none after.
Recorded = tuple[int, tuple[int, ...]]

#: What settling a held call answers on a shared ledger: :data:`Recorded` (its versions
#: empty on a store that does not version its totals) and every process's totals of the
#: hold's scopes as the commit left them, this event in them -- read in the same step (no
#: read more), the floor of the scopes' alerts (R3.1: calls that all took their holds
#: before any was charged learn the fleet's spend from their charges).  Read only,
#: shared by the calls of one commit; by scope name, possibly naming more scopes.
Settled = tuple[int, tuple[int, ...], Mapping[str, Totals]]


#: A slice granted under this fraction of its holder's fair share is *short*: counted as a
#: shortfall, and asked for again at the next poll (rounding, and demands that moved since
#: the other holders' renewals, leave grants a little under it: not worth a round).
SHORT_FRACTION = 0.9


@dataclass(frozen=True, slots=True)
class SliceGrant:
    """One lease (grant or renewal) of a slice of a global pool."""

    pool: str
    holder: str
    amount: int
    fair_share: int
    holders: int
    ttl_s: float
    #: Bucket level that comes with a grown slice: the part of the unassigned capacity's
    #: level it took (the holder adds it to its bucket; a new slice otherwise starts empty).
    credit: int = 0
    #: The pool's count of leases granted less than their fair share, after this one.
    shortfalls: int = 0


@runtime_checkable
class BudgetLedger(Protocol):
    """Atomic shared holds (R1.2 across processes).

    A ledger whose holds expire may also offer ``async renew(hold) -> bool`` (keep it
    alive another TTL while its call waits; ``False`` if it had expired): the gateway
    uses it when present.  A ledger with ``hold_unlimited = False`` is not asked to hold
    a call that no limit of its scopes applies to (there is nothing to check).
    """

    async def try_reserve(
        self, hold_id: str, limits: tuple[ScopeLimit, ...], *, model: str, tokens: int,
        cost_usd: float,
    ) -> Hold:
        """Hold the amounts in every scope or raise :class:`BudgetExceededError`.

        Raises :class:`StoreUnavailableError` when the ledger cannot be reached
        and no local allowance applies (fail-closed).
        """
        ...

    async def settle(self, event: UsageEvent, hold: Hold) -> bool:
        """Record ``event`` and release ``hold`` in one atomic step; ``False`` if a duplicate."""
        ...

    async def release(self, hold: Hold) -> None:
        """Release ``hold`` without charging (the call failed before any usage)."""
        ...


@runtime_checkable
class SliceBackend(Protocol):
    """Leases on slices of global pools, max-min fair between holders."""

    async def lease_slice(
        self, pool: str, holder: str, *, demand: int, capacity: int, ttl_s: float,
        level: float | None = None,
    ) -> SliceGrant:
        """``level``: the holder's bucket level now (``None``: unknown), the part above a
        shrunk grant going back to the pool."""
        ...

    async def release_slice(self, pool: str, holder: str) -> None: ...


@runtime_checkable
class SliceShortfalls(Protocol):
    """A slice backend that counts the leases granted less than their fair share, so a
    holder can renew (and shrink to its share) as soon as another one goes short."""

    async def slice_shortfalls(self, pools: Sequence[str]) -> list[int]:
        """Each pool's count (:attr:`SliceGrant.shortfalls`), in ``pools`` order."""
        ...
