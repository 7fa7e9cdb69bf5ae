"""The allocator: expiring leases on provider pools, granted in priority-with-fairness order.

R5.3–R5.5.  Every model call waits here (``acquire`` before the call,
``settle`` after it), so this is the hot path: no pydantic models and no log
calls per acquire, O(1) queue operations, and no per-lease tasks — one
servicing coroutine (:meth:`Allocator.run`, or :func:`open_allocator`) wakes
for lease expiry, aging and bucket refill.

Order: the :class:`~policies.fairness.AllocationPolicy` ranks waiters.  The
allocator enforces its invariants whatever the policy says:

* capacity is never exceeded (concurrent slots; per-minute token and request
  buckets);
* a request above the max share is granted at most the max share, and no
  grant takes a holder past the max share of a pool while others wait (its
  request is *parked* until one of its own leases ends);
* the least-served waiter is served first when the policy's choice is more
  than ``fairness_slack_tokens`` of service ahead of it, which bounds every
  backlogged holder's lag, so each gets its min share (an equal split under
  saturation) and nobody starves;
* the background class gets at least ``min_share`` of the pool's recent
  service whenever it waits;
* a chosen request that does not fit blocks the ones behind it (no bypass,
  so large requests are not starved by small ones).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Final

import anyio

from policies.fairness import AllocationPolicy
from scheduler.allocator._core import AllocatorCore
from scheduler.allocator._leases import Lease
from scheduler.allocator._pools import Pool
from scheduler.allocator._records import GONE
from scheduler.allocator._stats import (
    AllocatorStatistics,
    PoolDemand,
    PoolStatistics,
    WaiterStatistics,
    pool_statistics,
    waiter_statistics,
)
from scheduler.config import PRIORITY_VALUES, AllocatorConfig, PoolConfig, PriorityClass
from scheduler.core import AllocationError, EventBus, LeaseError, RateLimitInfo, WouldBlockError

__all__ = ["UNSET", "Allocator", "open_allocator"]

_BACKGROUND = PRIORITY_VALUES["background"]


class _Unset(Enum):
    UNSET = "unset"


#: "Leave this capacity as it is" for :meth:`Allocator.set_capacity`.
UNSET: Final = _Unset.UNSET

class Allocator(AllocatorCore):
    """Pools of provider capacity lent out as expiring leases (see module docstring).

    Use inside a running event loop, with :meth:`run` serviced by one task
    (or use :func:`open_allocator`).  Without :meth:`run` grants, settling and
    refills still work, but leases never expire and nobody is woken when a
    bucket refills on its own or a waiter ages.
    """

    __slots__ = ("_running",)

    def __init__(
        self,
        config: AllocatorConfig | None = None,
        *,
        policy: AllocationPolicy | None = None,
        clock: Callable[[], float] | None = None,
        events: EventBus | None = None,
    ) -> None:
        super().__init__(config, policy=policy, clock=clock, events=events)
        self._running = False

    # -- holders ----------------------------------------------------------------------------
    def register(self, holder: str, priority: PriorityClass | int = "normal") -> None:
        """Declare ``holder`` (a task id) with its R5.1 class or an int base priority."""
        if isinstance(priority, int):
            base = priority
        else:
            try:
                base = PRIORITY_VALUES[priority]
            except KeyError:
                raise AllocationError(f"unknown priority class {priority!r}") from None
        h = self._holder(holder)
        if (h.base_priority, h.background) != (base, base <= _BACKGROUND):
            h.base_priority, h.background = base, base <= _BACKGROUND
            self._reindex_holder(h)

    def set_token_fraction(self, holder: str, fraction: float) -> None:
        """Feed the task's tokens used ÷ task budget (above ``demotion_at`` → −1, R5.2)."""
        h = self._holder(holder)
        if h.token_fraction != fraction:
            h.token_fraction = fraction
            self._reindex_holder(h)

    def set_blocking(self, holder: str, blocking: bool) -> None:
        """Mark whether other tasks wait on ``holder`` (→ priority at least 3, R5.2)."""
        h = self._holder(holder)
        if h.blocking != blocking:
            h.blocking = blocking
            self._reindex_holder(h)

    def unregister(self, holder: str) -> None:
        """Forget ``holder``: release its leases, withdraw its waits, drop its counters."""
        if holder not in self._holders:
            return
        self.release_holder(holder)
        del self._holders[holder]
        for p in self._pools.values():
            p.accounts.pop(holder, None)

    # -- pools ------------------------------------------------------------------------------
    def set_capacity(
        self,
        pool: str,
        *,
        tokens_per_minute: int | _Unset | None = UNSET,
        requests_per_minute: int | _Unset | None = UNSET,
        concurrent: int | _Unset | None = UNSET,
    ) -> None:
        """Change a pool's capacities at run time (``None`` = unlimited); creates new pools.

        ``tokens_per_minute=0`` closes the pool: requests that need tokens wait (at
        their full size) until a later call gives it capacity again.
        """
        p = self._pools.get(pool)
        if p is None:
            p = self._pools[pool] = self._new_pool(pool, PoolConfig())
            if self._default_pool is None:
                self._default_pool = pool
        tpm = _pick(tokens_per_minute, p.tpm.capacity if p.tpm else None)
        rpm = _pick(requests_per_minute, p.rpm.capacity if p.rpm else None)
        conc = _pick(concurrent, p.concurrent)
        # a per-minute capacity of 0 closes the pool (a global slice not granted yet)
        for name, per_minute in (("tokens_per_minute", tpm), ("requests_per_minute", rpm)):
            if per_minute is not None and per_minute < 0:
                raise AllocationError(f"pool {pool!r}: {name} must be >= 0, got {per_minute}")
        if conc is not None and conc <= 0:
            raise AllocationError(f"pool {pool!r}: capacities must be > 0, got {conc}")
        p.set_capacity(tpm, rpm, conc)
        self._clamp_waiting(p)
        if self._bound:
            self._dispatch(p, self._clock())

    def _clamp_waiting(self, p: Pool) -> None:
        """Cut waiting requests to a shrunk max share (a grant checks only holders that hold)."""
        for a in p.accounts.values():
            for w in a.waiters:
                w.tokens, w.calls = p.clamp(w.tokens, w.calls)

    def update_from_rate_limits(self, pool: str, info: RateLimitInfo) -> None:
        """Adopt the per-minute limits a provider reported in its response headers."""
        self.set_capacity(
            pool,
            tokens_per_minute=UNSET if info.tokens_limit is None else info.tokens_limit,
            requests_per_minute=UNSET if info.requests_limit is None else info.requests_limit,
        )

    # -- acquiring --------------------------------------------------------------------------
    def acquire_nowait(
        self, holder: str, *, tokens: int = 0, calls: int = 1, pool: str | None = None
    ) -> Lease:
        """Grant now or raise :class:`WouldBlockError` (never jumps the queue)."""
        p, a = self._admit(holder, tokens, calls, pool)
        requested = tokens
        tokens, calls = p.clamp(tokens, calls)
        now = self._clock()
        if p.n_queued or p.n_parked or not p.fits(tokens, calls, now):
            raise WouldBlockError(f"pool {p.name!r} cannot grant {tokens} tokens now")
        return self._grant(p, a, tokens, calls, requested, now)

    @asynccontextmanager
    async def open_lease(
        self, holder: str, *, tokens: int = 0, calls: int = 1, pool: str | None = None
    ) -> AsyncIterator[Lease]:
        """Acquire a lease; release it on exit unless it was settled inside."""
        lease = await self.acquire(holder, tokens=tokens, calls=calls, pool=pool)
        try:
            yield lease
        finally:
            if lease.active:
                self.release(lease.id)

    # -- holding ----------------------------------------------------------------------------
    def renew(self, lease_id: str, *, holder: str | None = None) -> float:
        """Extend the lease by the TTL from now; returns the new ``expires_at``."""
        lease = self._lookup(lease_id, holder)
        expires_at = self._clock() + self._ttl
        self._leases.renew(lease, expires_at)
        return expires_at

    def settle(
        self, lease_id: str, used_tokens: int, *, output_tokens: int = 0,
        holder: str | None = None,
    ) -> int:
        """End the lease with the call's actual usage; returns the tokens given back.

        ``used_tokens`` is the call's total (input + output); ``output_tokens``
        the part that was output, weighted by ``output_weight`` in the holder's
        service counter.  Using more than leased is charged to the pool's bucket.
        """
        # The lease leaves the table here (LeaseTable.remove, inline), once it is known to
        # be the caller's: a foreign settle must leave it where it is.
        if holder is None:
            lease = self._by_id.pop(lease_id, None)
            if lease is None:
                lease = self._lookup(lease_id, None)  # raises the precise LeaseError
        else:
            lease = self._lookup(lease_id, holder)
            del self._by_id[lease_id]
        lease.active = False
        now = self._clock()
        used = used_tokens if used_tokens > 0 else 0
        if output_tokens > 0:
            out = output_tokens if output_tokens <= used else used
            weights = self._weights
            cost = ((used - out) * weights[0] + out * weights[1] if weights is not None
                    else self._cost(used - out, out))
        else:
            w_in = self._w_in
            cost = used * w_in if w_in is not None else self._cost(used, 0)
        delta = cost - lease.charged
        if delta:
            self._add_service(lease, delta, now)
        back = lease.tokens - used
        self._end(lease, now, back, False)
        return back if back > 0 else 0

    def release(self, lease_id: str, *, holder: str | None = None) -> None:
        """End the lease unused: tokens, the call and the service charge come back."""
        lease = self._lookup(lease_id, holder)
        self._leases.remove(lease)
        now = self._clock()
        self._add_service(lease, -lease.charged, now)
        self._end(lease, now, lease.tokens, True)

    def release_holder(self, holder: str) -> int:
        """Withdraw every wait of ``holder`` and release its leases (crash, deadlock victim).

        Returns the number of leases released.  Withdrawn waits raise
        :class:`LeaseError` in their ``acquire``.
        """
        h = self._holders.get(holder)
        touched: list[Pool] = []
        if h is not None:
            error = LeaseError(f"holder {holder!r} released")
            for a in h.accounts.values():
                if a.waiter is None:
                    continue
                p = a.pool
                for w in a.waiters:
                    p.unlink(w)
                    w.state, w.error = GONE, error
                    self._wake(w.event)
                touched.append(p)
        leases = self._leases.of_holder(holder)
        for lease in leases:
            self.release(lease.id)
        if touched:
            now = self._clock()
            for p in touched:
                self._dispatch(p, now)
        return len(leases)

    # -- servicing --------------------------------------------------------------------------
    async def run(self) -> None:
        """Service lease expiry, aging and bucket refill forever (one task per allocator)."""
        if self._running:
            raise AllocationError("allocator is already being serviced")
        if not self._bound:
            self._bind()
        self._running = True
        try:
            while True:
                self._service(self._clock())
                deadline = self._next_deadline()
                self._kick = self._event_cls()
                self._sleep_until = deadline
                with anyio.CancelScope(deadline=deadline):
                    await self._kick.wait()
        finally:
            self._running = False
            self._sleep_until = -math.inf

    def statistics(self) -> AllocatorStatistics:
        """Pools, leases and every waiter's queue position and estimated wait (R5.5)."""
        now = self._clock()
        pools: dict[str, PoolStatistics] = {}
        waiters: list[WaiterStatistics] = []
        for p in self._pools.values():
            queued = [w for a in p.accounts.values() for w in a.waiters]
            first = self._select(p) if p.n_queued else None
            waiters.extend(waiter_statistics(p, queued, first, self.policy, now, self._ttl))
            pools[p.name] = pool_statistics(p, len(queued), now)
        return AllocatorStatistics(
            pools=pools, waiters=tuple(waiters), leases=len(self._leases),
            holders=len(self._holders),
        )

    def demand(self, pool: str | None = None) -> PoolDemand:
        """What ``pool`` is asked for now: tokens held in leases and requested by waiters.

        Cheap (no ordering); a global quota slice is sized from it.  Waiters count
        with the tokens they *requested*, before any max-share cut.
        """
        name = pool if pool is not None else self._default_pool
        p = self._pools.get(name) if name is not None else None
        if p is None:
            raise AllocationError(f"unknown pool {name!r}; known: {sorted(self._pools)}")
        waiting = [w for a in p.accounts.values() for w in a.waiters]
        return PoolDemand(
            pool=p.name, held_tokens=sum(a.held_tokens for a in p.accounts.values()),
            waiting_tokens=sum(w.requested for w in waiting), waiting=len(waiting),
            avg_hold_s=p.avg_hold_s,
        )

    # -- lookup ---------------------------------------------------------------------------------
    def _lookup(self, lease_id: str, holder: str | None) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseError("unknown, ended or expired lease")
        if holder is not None and lease.holder != holder:
            raise LeaseError(f"lease is not held by {holder!r}")
        return lease


def _pick(value: int | _Unset | None, current: float | int | None) -> int | None:
    if value is UNSET:
        return None if current is None else int(current)
    return value


@asynccontextmanager
async def open_allocator(
    config: AllocatorConfig | None = None,
    *,
    policy: AllocationPolicy | None = None,
    clock: Callable[[], float] | None = None,
    events: EventBus | None = None,
) -> AsyncIterator[Allocator]:
    """An :class:`Allocator` whose servicing task runs for the duration of the block."""
    allocator = Allocator(config, policy=policy, clock=clock, events=events)
    async with anyio.create_task_group() as tg:
        tg.start_soon(allocator.run)
        try:
            yield allocator
        finally:
            tg.cancel_scope.cancel()
