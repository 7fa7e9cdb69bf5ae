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

:class:`Allocator` is the public face; it builds the parts and hands each only
what it uses.  Each pool (``_pools``) is a run queue (``_waitqueue``, with its
``_aging``); the ``Dispatcher`` (``_dispatcher``) queues requests on it and
grants them in order; ``Grants`` (``_grants``) lends capacity and takes it
back; the ``Servicer`` (``_servicer``) expires leases and wakes for refills
and aging.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from policies.fairness import AllocationPolicy, PriorityWithFairness
from scheduler.allocator._asyncio_park import backend_clock, parking
from scheduler.allocator._bound_policy import BoundPolicy
from scheduler.allocator._dispatcher import Dispatcher
from scheduler.allocator._grants import Grants
from scheduler.allocator._leases import Lease, LeaseTable
from scheduler.allocator._pools import UNSET, Pool, Unset
from scheduler.allocator._records import GONE, GRANTED, PARKED, QUEUED, Account, Holder, Waiter
from scheduler.allocator._servicer import Alarm, Servicer
from scheduler.allocator._stats import (
    AllocatorStatistics,
    PoolDemand,
    allocator_statistics,
    oldest_wait,
    pool_demand,
)
from scheduler.config import PRIORITY_VALUES, AllocatorConfig, PoolConfig, PriorityClass
from scheduler.core import AllocationError, EventBus, LeaseError, RateLimitInfo, WouldBlockError

__all__ = ["UNSET", "Allocator", "open_allocator"]

_BACKGROUND = PRIORITY_VALUES["background"]


class Allocator:
    """Pools of provider capacity lent out as expiring leases (see module docstring).

    Use inside a running event loop, with :meth:`run` serviced by one task
    (or use :func:`open_allocator`).  Without :meth:`run` grants, settling and
    refills still work, but leases never expire and nobody is woken when a
    bucket refills on its own or a waiter ages.
    """

    #: Slots: the hot path reads these attributes on every request.
    __slots__ = (
        "_bound", "_bound_policy", "_by_id", "_clock", "_clock_injected", "_cost",
        "_default_pool", "_dispatcher", "_enqueue_priority", "_grants", "_holders",
        "_leases", "_native", "_pools", "_servicer", "_ttl", "_w_in", "_weights",
        "config", "policy",
    )

    def __init__(
        self,
        config: AllocatorConfig | None = None,
        *,
        policy: AllocationPolicy | None = None,
        clock: Callable[[], float] | None = None,
        events: EventBus | None = None,
    ) -> None:
        cfg = config or AllocatorConfig()
        self.config = cfg
        self.policy: AllocationPolicy = policy or PriorityWithFairness(cfg.policy_params())
        bound = BoundPolicy(self.policy)
        self._leases = LeaseTable()
        alarm = Alarm()
        grants = Grants(bound, self._leases, alarm, ttl=cfg.lease_ttl_s,
                        window_s=cfg.share_window_s)
        dispatcher = Dispatcher(bound, grants, alarm, slack=float(cfg.fairness_slack_tokens),
                                min_share=cfg.min_share)
        grants.connect(dispatcher)
        self._pools: dict[str, Pool] = {}
        self._servicer = Servicer(self._pools, self._leases, alarm, end=grants.end,
                                  dispatch=dispatcher.dispatch, events=events)
        self._grants, self._dispatcher = grants, dispatcher
        self._by_id = self._leases.by_id
        self._ttl = cfg.lease_ttl_s
        self._cost, self._weights, self._w_in = bound.cost, bound.weights, bound.w_in
        self._enqueue_priority = bound.enqueue_priority
        self._bound_policy = bound
        self._pools.update((name, self._new_pool(name, pc)) for name, pc in cfg.pools.items())
        self._default_pool = next(iter(self._pools), None)
        self._holders: dict[str, Holder] = {}
        self._clock: Callable[[], float] = clock or anyio.current_time
        self._clock_injected = clock is not None
        #: Waiters park on a loop future (awaitable itself) rather than an anyio Event.
        self._native = False
        self._bound = False

    # -- binding and records ------------------------------------------------------------------
    def _bind(self) -> None:
        """Bind to the running loop (first use): how waiters park, how time is read."""
        park = parking()
        self._dispatcher.bind(park)
        self._native = park.native
        if not self._clock_injected:
            self._clock = backend_clock()
        self._bound = True

    def _new_pool(self, name: str, config: PoolConfig) -> Pool:
        cfg, bound = self.config, self._bound_policy
        p = Pool(name, config, cfg.max_share, cfg.share_window_s,
                 track_fair=not bound.by_counter, quantum=cfg.fairness_quantum_tokens,
                 level_quantum=bound.rank_quantum)
        if bound.aging_step is not None:
            p.aging.first_step = bound.aging_step
        return p

    def _holder(self, holder: str) -> Holder:
        h = self._holders.get(holder)
        if h is None:
            base = PRIORITY_VALUES["normal"]
            h = self._holders[holder] = Holder(holder, base, base <= _BACKGROUND)
            self._dispatcher.holder_changed(h)
        return h

    def _reindex_holder(self, h: Holder) -> None:
        self._dispatcher.reindex_holder(h, self._clock() if h.accounts else 0.0)

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
        h = self._holders.get(holder) or self._holder(holder)
        if h.token_fraction == fraction:
            return
        h.token_fraction = fraction
        # every settled call comes here (a new fraction): nothing more to do
        # when the holder waits nowhere and its starting level stays (spares copy it)
        hint = self._enqueue_priority
        if hint is not None and hint(h.base_priority, fraction, h.blocking) == h.level0:
            for a in h.accounts.values():
                if a.waiter is not None:
                    break  # (reindex_holder sets every record's copy, spares too)
                if a.spare is not None:
                    a.spare.token_fraction = fraction
            else:
                return
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
        tokens_per_minute: int | Unset | None = UNSET,
        requests_per_minute: int | Unset | None = UNSET,
        concurrent: int | Unset | None = UNSET,
        credit: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """Change a pool's capacities at run time (``None`` = unlimited); creates new pools.

        ``tokens_per_minute=0`` closes the pool: requests that need tokens wait (at their
        full size) until a later call gives it capacity again.  ``credit``: (tokens, requests)
        added to the buckets, up to capacity (the level a grown global slice brings)."""
        p = self._pools.get(pool)
        if p is None:
            p = self._pools[pool] = self._new_pool(pool, PoolConfig())
            if self._default_pool is None:
                self._default_pool = pool
        now = self._clock() if self._bound else None
        p.change_capacity(tokens_per_minute, requests_per_minute, concurrent, now, credit)
        if now is not None:
            self._dispatcher.dispatch(p, now)

    def update_from_rate_limits(self, pool: str, info: RateLimitInfo) -> None:
        """Adopt the per-minute limits a provider reported in its response headers."""
        self.set_capacity(
            pool,
            tokens_per_minute=UNSET if info.tokens_limit is None else info.tokens_limit,
            requests_per_minute=UNSET if info.requests_limit is None else info.requests_limit,
        )

    # -- acquiring --------------------------------------------------------------------------
    async def acquire(
        self, holder: str, *, tokens: int = 0, calls: int = 1, pool: str | None = None
    ) -> Lease:
        """Wait for a lease of ``tokens`` and ``calls`` from ``pool`` (R5.4, R5.5).

        A request above the pool's max share is granted the max share (see
        :attr:`Lease.tokens`).  Returns at once, without yielding, when the
        request can be granted and nobody is waiting.  Cancellation while
        waiting (or right after the grant) gives everything back.
        """
        # lookups, not a caught KeyError: a raised exception gives this frame a frame
        # object (about 0.3 KiB) that a holder's first request would keep while it waits
        p = self._pools.get(self._default_pool if pool is None else pool)  # type: ignore[arg-type]
        a = None if p is None or tokens < 0 or calls < 1 else p.accounts.get(holder)
        if p is None or a is None:  # _admit raises the precise error
            p, a = self._admit(holder, tokens, calls, pool)  # an account once it is bound
        requested = tokens
        if p.max_tokens is not None and tokens > p.max_tokens:
            tokens = p.max_tokens
        if p.max_calls is not None and calls > p.max_calls:
            calls = p.max_calls
        now = self._clock()
        if not (p.n_queued or p.n_parked) and p.fits(tokens, calls, now):
            return self._grants.grant(p, a, tokens, calls, requested, now)
        # Queue the request (the dispatcher may grant it at once), then wait for the grant.
        w = self._dispatcher.enqueue(p, a, tokens, calls, requested, now)
        del now  # freed now, while it is in the CPU caches, not after the wait
        event = w.event
        lease: Lease | None
        try:
            if self._native:
                lease = await event  # the grant sets the lease as the future's result
            else:
                await event.wait()
                lease = w.lease if w.state == GRANTED else None
        except BaseException:
            self._abandon(w)
            raise
        if lease is None:
            raise w.error or LeaseError("request withdrawn")
        w.event = None  # freed now, while its memory is still in the CPU caches
        if not w.self_queued:
            a.spare = w  # the record serves the holder's next wait here
        return lease

    def _admit(
        self, holder: str, tokens: int, calls: int, pool: str | None
    ) -> tuple[Pool, Account]:
        """Validate a request (binding to the running loop on first use); its pool and account."""
        if not self._bound:
            self._bind()
        name = pool if pool is not None else self._default_pool
        p = self._pools.get(name) if name is not None else None
        if p is None:
            raise AllocationError(f"unknown pool {name!r}; known: {sorted(self._pools)}")
        if tokens < 0 or calls < 1:
            raise AllocationError(f"need tokens >= 0 and calls >= 1, got {tokens}, {calls}")
        a = p.accounts.get(holder)
        if a is None:  # the holder's first request in this pool
            h = self._holder(holder)
            a = p.accounts[holder] = h.accounts[p.name] = Account(h)
            a.pool = p
            self._dispatcher.place(a)
        return p, a

    def _abandon(self, w: Waiter) -> None:
        """The waiting coroutine was cancelled: give back whatever it holds or waits for."""
        if w.state == GRANTED:
            lease = w.lease  # (see Waiter.lease)
            event = w.event
            if self._native and not event.cancelled():
                lease = event.result()
            if lease is not None and lease.active:
                self._leases.remove(lease)
                now = self._clock()
                self._grants.charge(lease, -lease.charged, now)
                self._grants.end(lease, now, lease.tokens, True)
        elif w.state == QUEUED or w.state == PARKED:
            p = self._pools[w.pool]
            p.unlink(w)
            w.state = GONE
            self._dispatcher.dispatch(p, self._clock())

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
        return self._grants.grant(p, a, tokens, calls, requested, now)

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
        a = lease._account
        if delta:  # Grants.charge, inline (every settled call corrects its estimate)
            a.counter += delta
            if a.waiter is not None:
                self._dispatcher.requeue(a.pool, a, now)
        back = lease.tokens - used
        # Grants.end, inline for a pool that only counts slots (one Python call less per
        # settled call); a pool with buckets takes its tokens back there.
        p = a.pool
        if not p.slots_only:
            self._grants.end(lease, now, back, False)
            return back if back > 0 else 0
        calls = lease.calls
        p.in_use -= calls
        a.held_tokens -= lease.tokens
        a.held_calls -= calls
        p.hold_total += now - lease.granted_at
        p.ended += 1
        if p.n_parked:
            if a.holder.id in p.parked:
                self._dispatcher.unpark(p, a.holder.id, now)
            self._dispatcher.dispatch(p, now)
        elif p.n_queued:
            self._dispatcher.dispatch(p, now)
        return back if back > 0 else 0

    def release(self, lease_id: str, *, holder: str | None = None) -> None:
        """End the lease unused: tokens, the call and the service charge come back."""
        lease = self._lookup(lease_id, holder)
        self._leases.remove(lease)
        now = self._clock()
        self._grants.charge(lease, -lease.charged, now)
        self._grants.end(lease, now, lease.tokens, True)

    def release_holder(self, holder: str) -> int:
        """Withdraw every wait of ``holder`` and release its leases (crash, deadlock victim).

        Returns the number of leases released.  Withdrawn waits raise
        :class:`LeaseError` in their ``acquire``.
        """
        h = self._holders.get(holder)
        touched = [] if h is None else self._dispatcher.withdraw(
            h, LeaseError(f"holder {holder!r} released"))
        # the scan of every live lease is skipped when the holder holds nothing: every task
        # ending calls this, and with 10,000 concurrent tasks the scans were quadratic
        holds = h is None or any(a.held_calls or a.held_tokens for a in h.accounts.values())
        leases = self._leases.of_holder(holder) if holds else []
        for lease in leases:
            self.release(lease.id)
        if touched:
            now = self._clock()
            for p in touched:
                self._dispatcher.dispatch(p, now)
        return len(leases)

    # -- servicing --------------------------------------------------------------------------
    async def run(self) -> None:
        """Service lease expiry, aging and bucket refill forever (one task per allocator)."""
        if not self._bound:
            self._bind()
        await self._servicer.run(self._clock)

    def statistics(self) -> AllocatorStatistics:
        """Pools, leases and every waiter's queue position and estimated wait (R5.5)."""
        return allocator_statistics(self._pools.values(), self._dispatcher.select, self.policy,
                                    self._clock(), self._ttl, len(self._leases),
                                    len(self._holders))

    def longest_wait_s(self) -> float:
        """How long the request waiting longest has waited (0 when none waits): one pass
        over the waiting requests, without the ordering :meth:`statistics` does, so a
        periodic check asks this first."""
        now = self._clock()
        return now - oldest_wait(self._pools.values(), now)

    def demand(self, pool: str | None = None) -> PoolDemand:
        """What ``pool`` is asked for now: tokens held in leases and requested by waiters.

        Cheap (no ordering); a global quota slice is sized from it.  Waiters count
        with the tokens they *requested*, before any max-share cut.
        """
        name = pool if pool is not None else self._default_pool
        p = self._pools.get(name) if name is not None else None
        if p is None:
            raise AllocationError(f"unknown pool {name!r}; known: {sorted(self._pools)}")
        return pool_demand(p)

    # -- lookup ---------------------------------------------------------------------------------
    def _lookup(self, lease_id: str, holder: str | None) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseError("unknown, ended or expired lease")
        if holder is not None and lease.holder != holder:
            raise LeaseError(f"lease is not held by {holder!r}")
        return lease


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
