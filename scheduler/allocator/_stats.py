"""What :meth:`Allocator.statistics` reports: frozen snapshots (R5.5 queue position and wait)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from policies.fairness import AllocationPolicy
from scheduler.allocator._pools import PARKED, Pool, Waiter

__all__ = ["AllocatorStatistics", "PoolDemand", "PoolStatistics", "WaiterStatistics"]


@dataclass(frozen=True, slots=True)
class WaiterStatistics:
    """One waiting request.

    ``position`` is 1 for the request served next.  ``estimated_wait_s`` is a
    forecast from the capacity ahead of it: slots free up at ``concurrent ÷
    average hold`` per second (the lease TTL stands in for the hold until a
    lease has ended), buckets refill at their per-minute rate.  A request
    ``over_share`` waits for one of its holder's own leases to end.
    """

    holder: str
    pool: str
    position: int
    tokens: int
    calls: int
    requested_tokens: int
    effective_priority: int
    waited_s: float
    estimated_wait_s: float
    over_share: bool


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """Capacities, what is free and lent out, and counters of one pool."""

    name: str
    tokens_per_minute: int | None
    requests_per_minute: int | None
    concurrent: int | None
    tokens_available: float | None
    requests_available: float | None
    calls_in_use: int
    leases: int
    waiting: int
    grants: int
    expired: int
    max_share_tokens: int | None
    max_share_calls: int | None
    background_share: float
    avg_hold_s: float


@dataclass(frozen=True, slots=True)
class PoolDemand:
    """What :meth:`Allocator.demand` reports: tokens lent out and asked for in one pool."""

    pool: str
    held_tokens: int
    waiting_tokens: int
    waiting: int
    avg_hold_s: float


@dataclass(frozen=True, slots=True)
class AllocatorStatistics:
    """A snapshot of the whole allocator."""

    pools: Mapping[str, PoolStatistics]
    waiters: tuple[WaiterStatistics, ...]
    leases: int
    holders: int

    def waiting(self, holder: str) -> tuple[WaiterStatistics, ...]:
        """The waits of ``holder`` (its queue positions and estimated waits)."""
        return tuple(w for w in self.waiters if w.holder == holder)


def allocator_statistics(
    pools: Iterable[Pool], select: Callable[[Pool], Waiter | None], policy: AllocationPolicy,
    now: float, ttl: float, leases: int, holders: int,
) -> AllocatorStatistics:
    """:meth:`Allocator.statistics`: each pool's, and each waiter's in ``select``'s order."""
    by_name: dict[str, PoolStatistics] = {}
    waiters: list[WaiterStatistics] = []
    for p in pools:
        queued = [w for a in p.accounts.values() for w in a.waiters]
        first = select(p) if p.n_queued else None
        waiters.extend(waiter_statistics(p, queued, first, policy, now, ttl))
        by_name[p.name] = pool_statistics(p, len(queued), now)
    return AllocatorStatistics(pools=by_name, waiters=tuple(waiters), leases=leases,
                               holders=holders)


def oldest_wait(pools: Iterable[Pool], now: float) -> float:
    """When the request waiting longest in ``pools`` was queued (``now`` when none waits):
    one pass over the waiting requests, without the ordering of :func:`waiter_statistics`."""
    oldest = now
    for p in pools:
        if p.n_queued or p.n_parked:
            for a in p.accounts.values():
                if a.waiter is None:
                    continue
                for w in (a.waiter, *(a.more or ())):
                    if w.enqueued_at < oldest:
                        oldest = w.enqueued_at
    return oldest


def pool_demand(p: Pool) -> PoolDemand:
    """Tokens held in ``p``'s leases and requested by its waiters (before max-share cuts)."""
    waiting = [w for a in p.accounts.values() for w in a.waiters]
    return PoolDemand(
        pool=p.name, held_tokens=sum(a.held_tokens for a in p.accounts.values()),
        waiting_tokens=sum(w.requested for w in waiting), waiting=len(waiting),
        avg_hold_s=p.avg_hold_s,
    )


def pool_statistics(p: Pool, waiting: int, now: float) -> PoolStatistics:
    tpm, rpm = p.tpm, p.rpm
    share = p.recent_bg / p.recent_all if p.recent_all > 0 else 0.0
    return PoolStatistics(
        name=p.name,
        tokens_per_minute=None if tpm is None else int(tpm.capacity),
        requests_per_minute=None if rpm is None else int(rpm.capacity),
        concurrent=p.concurrent,
        tokens_available=None if tpm is None else tpm.refill(now),
        requests_available=None if rpm is None else rpm.refill(now),
        calls_in_use=p.in_use,
        leases=p.n_leases,
        waiting=waiting,
        grants=p.grants,
        expired=p.expired,
        max_share_tokens=p.max_tokens,
        max_share_calls=p.max_calls,
        background_share=share,
        avg_hold_s=p.avg_hold_s,
    )


def waiter_statistics(
    p: Pool,
    waiters: Sequence[Waiter],
    first: Waiter | None,
    policy: AllocationPolicy,
    now: float,
    ttl: float,
) -> Iterator[WaiterStatistics]:
    """Positions follow the policy's order, with the allocator's actual next choice first."""
    queued = policy.order([w for w in waiters if w.state != PARKED], now)
    if first is not None and first in queued:
        queued.remove(first)
        queued.insert(0, first)
    ordered = [*queued, *(w for w in waiters if w.state == PARKED)]
    hold = p.avg_hold_s if p.ended else ttl
    calls_ahead = 0
    tokens_ahead = 0
    for position, w in enumerate(ordered, start=1):
        calls_ahead += w.calls
        tokens_ahead += w.tokens
        yield WaiterStatistics(
            holder=w.holder,
            pool=p.name,
            position=position,
            tokens=w.tokens,
            calls=w.calls,
            requested_tokens=w.requested,
            effective_priority=policy.priority(w, now),
            waited_s=now - w.enqueued_at,
            estimated_wait_s=_estimate(p, calls_ahead, tokens_ahead, hold, now),
            over_share=w.state == PARKED or (
                p.over_share(w.holder, w.tokens, w.calls) and p.others_waiting(w.holder)),
        )


def _estimate(p: Pool, calls: int, tokens: int, hold: float, now: float) -> float:
    wait = 0.0
    if p.concurrent is not None:
        short = p.in_use + calls - p.concurrent
        if short > 0:
            wait = short * hold / p.concurrent
    if p.tpm is not None:
        p.tpm.refill(now)
        wait = max(wait, p.tpm.time_to(tokens))
    if p.rpm is not None:
        p.rpm.refill(now)
        wait = max(wait, p.rpm.time_to(calls))
    return wait
