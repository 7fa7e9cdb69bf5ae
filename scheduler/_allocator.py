"""The allocator: expiring leases on provider pools, granted in priority-with-fairness order.

R5.3–R5.5.  Every model call waits here (``acquire`` before the call,
``settle`` after it), so this is the hot path: no pydantic models and no log
calls per acquire, O(log n) heap operations, and no per-lease tasks — one
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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any, Final

import anyio
import structlog

from policies.fairness import AllocationPolicy, PriorityWithFairness

from ._allocator_stats import (
    AllocatorStatistics,
    PoolDemand,
    PoolStatistics,
    WaiterStatistics,
    pool_statistics,
    waiter_statistics,
)
from ._config import PRIORITY_VALUES, AllocatorConfig, PoolConfig, PriorityClass
from ._errors import AllocationError, LeaseError, WouldBlockError
from ._events import EventBus
from ._leases import Lease, LeaseTable, new_lease_id
from ._park import backend_clock, parking
from ._policy import ALLOCATION_POLICIES, fairness_params, make_allocation_policy
from ._pools import GONE, GRANTED, PARKED, QUEUED, Holder, Pool, Waiter
from ._provider import RateLimitInfo

__all__ = [
    "ALLOCATION_POLICIES",
    "UNSET",
    "Allocator",
    "fairness_params",
    "make_allocation_policy",
    "open_allocator",
]

_log = structlog.get_logger("vibe_engine.allocator")
_BACKGROUND = PRIORITY_VALUES["background"]
_HOLD_EWMA = 0.1


class _Unset(Enum):
    UNSET = "unset"


#: "Leave this capacity as it is" for :meth:`Allocator.set_capacity`.
UNSET: Final = _Unset.UNSET

class Allocator:
    """Pools of provider capacity lent out as expiring leases (see module docstring).

    Use inside a running event loop, with :meth:`run` serviced by one task
    (or use :func:`open_allocator`).  Without :meth:`run` grants, settling and
    refills still work, but leases never expire and nobody is woken when a
    bucket refills on its own or a waiter ages.
    """

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
        self.policy: AllocationPolicy = policy or PriorityWithFairness(fairness_params(cfg))
        # Bound once: the hot path calls them per request.
        self._priority = self.policy.priority
        self._rank = self.policy.rank
        self._changes_at = self.policy.priority_changes_at
        self._cost = self.policy.service
        #: A policy whose rank *is* the service counter needs no separate least-served heap.
        self._track_fair = not getattr(self.policy, "ranks_by_counter", False)
        self._pools = {name: self._new_pool(name, pc) for name, pc in cfg.pools.items()}
        self._default_pool = next(iter(self._pools), None)
        self._holders: dict[str, Holder] = {}
        self._leases = LeaseTable()
        self._ttl = cfg.lease_ttl_s
        self._slack = cfg.fairness_slack_tokens
        self._min_share = cfg.min_share
        self._window = cfg.share_window_s
        self._events = events
        self._clock: Callable[[], float] = clock or anyio.current_time
        self._clock_injected = clock is not None
        self._event_cls: Callable[[], Any] = anyio.Event
        # How waiters park; bound to the running loop's cheapest primitive by _bind().
        self._park_new: Callable[[], Any] = anyio.Event
        self._wake: Callable[[Any], None] = anyio.Event.set
        self._wait_on: Callable[[Any], Awaitable[Any]] = anyio.Event.wait
        self._bound = False
        self._seq = 0
        self._kick: Any = None
        #: The servicing task's wake-up deadline; -inf when not running or already kicked.
        self._sleep_until = -math.inf
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
        h = self._holders.get(holder)
        if h is None:
            self._holders[holder] = Holder(holder, base, base <= _BACKGROUND)
            return
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
            p.counters.pop(holder, None)

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
        if tpm is not None and tpm < 0:
            raise AllocationError(f"pool {pool!r}: tokens_per_minute must be >= 0, got {tpm}")
        for value in (rpm, conc):
            if value is not None and value <= 0:
                raise AllocationError(f"pool {pool!r}: capacities must be > 0, got {value}")
        p.set_capacity(tpm, rpm, conc)
        if self._bound:
            self._dispatch(p, self._clock())

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
        if not self._bound:
            self._bind()
        p, h, tokens, calls, requested = self._prepare(holder, tokens, calls, pool)
        now = self._clock()
        if not (p.n_queued or p.n_parked) and p.fits(tokens, calls, now):
            return self._grant(p, h, tokens, calls, requested, now)
        w = self._enqueue(p, h, tokens, calls, requested, now)
        if p.concurrent is None or p.in_use < p.concurrent:
            self._dispatch(p, now)
        try:
            await self._wait_on(w.event)
        except BaseException:
            self._abandon(w)
            raise
        lease = w.lease
        if lease is None:
            raise w.error or LeaseError("request withdrawn")
        return lease

    def acquire_nowait(
        self, holder: str, *, tokens: int = 0, calls: int = 1, pool: str | None = None
    ) -> Lease:
        """Grant now or raise :class:`WouldBlockError` (never jumps the queue)."""
        if not self._bound:
            self._bind()
        p, h, tokens, calls, requested = self._prepare(holder, tokens, calls, pool)
        now = self._clock()
        if p.n_queued or p.n_parked or not p.fits(tokens, calls, now):
            raise WouldBlockError(f"pool {p.name!r} cannot grant {tokens} tokens now")
        return self._grant(p, h, tokens, calls, requested, now)

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
        lease = self._leases.get(lease_id)
        if lease is None or (holder is not None and lease.holder != holder):
            lease = self._lookup(lease_id, holder)  # raises the precise LeaseError
        now = self._clock()
        used = used_tokens if used_tokens > 0 else 0
        out = output_tokens if 0 < output_tokens <= used else (used if output_tokens > 0 else 0)
        p = self._pools[lease.pool]
        delta = self._cost(used - out, out) - lease.charged
        if delta:
            self._add_service(p, lease.holder, delta, now)
        back = lease.tokens - used
        self._end(lease, now, back, calls_back=False)
        return back if back > 0 else 0

    def release(self, lease_id: str, *, holder: str | None = None) -> None:
        """End the lease unused: tokens, the call and the service charge come back."""
        lease = self._lookup(lease_id, holder)
        now = self._clock()
        self._add_service(self._pools[lease.pool], lease.holder, -lease.charged, now)
        self._end(lease, now, lease.tokens, calls_back=True)

    def release_holder(self, holder: str) -> int:
        """Withdraw every wait of ``holder`` and release its leases (crash, deadlock victim).

        Returns the number of leases released.  Withdrawn waits raise
        :class:`LeaseError` in their ``acquire``.
        """
        h = self._holders.get(holder)
        touched: set[Pool] = set()
        if h is not None:
            error = LeaseError(f"holder {holder!r} released")
            for w in list(h.waiting):
                p = self._pools[w.pool]
                p.unlink(w)
                w.state, w.error = GONE, error
                self._wake(w.event)
                touched.add(p)
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
            queued = [w for h in self._holders.values() for w in h.waiting if w.pool == p.name]
            first = self._select(p, now) if p.n_queued else None
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
        waiting = [w for h in self._holders.values() for w in h.waiting if w.pool == p.name]
        return PoolDemand(
            pool=p.name, held_tokens=sum(p.held_tokens.values()),
            waiting_tokens=sum(w.requested for w in waiting), waiting=len(waiting),
            avg_hold_s=p.avg_hold_s,
        )

    # -- internals: binding and lookup -------------------------------------------------------
    def _bind(self) -> None:
        self._event_cls = type(anyio.Event())
        self._park_new, self._wake, self._wait_on = parking()
        if not self._clock_injected:
            self._clock = backend_clock()
        self._bound = True

    def _new_pool(self, name: str, config: PoolConfig) -> Pool:
        cfg = self.config
        return Pool(name, config, cfg.max_share, cfg.share_window_s, track_fair=self._track_fair)

    def _holder(self, holder: str) -> Holder:
        h = self._holders.get(holder)
        if h is None:
            base = PRIORITY_VALUES["normal"]
            h = self._holders[holder] = Holder(holder, base, False)
        return h

    def _prepare(
        self, holder: str, tokens: int, calls: int, pool: str | None
    ) -> tuple[Pool, Holder, int, int, int]:
        name = pool if pool is not None else self._default_pool
        p = self._pools.get(name) if name is not None else None
        if p is None:
            raise AllocationError(f"unknown pool {name!r}; known: {sorted(self._pools)}")
        if tokens < 0 or calls < 1:
            raise AllocationError(f"need tokens >= 0 and calls >= 1, got {tokens}, {calls}")
        h = self._holders.get(holder) or self._holder(holder)
        granted, calls = p.clamp(tokens, calls)
        return p, h, granted, calls, tokens

    def _lookup(self, lease_id: str, holder: str | None) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseError("unknown, ended or expired lease")
        if holder is not None and lease.holder != holder:
            raise LeaseError(f"lease is not held by {holder!r}")
        return lease

    def _kick_servicer(self) -> None:
        self._sleep_until = -math.inf
        self._kick.set()

    # -- internals: queue ---------------------------------------------------------------------
    def _enqueue(
        self, p: Pool, h: Holder, tokens: int, calls: int, requested: int, now: float
    ) -> Waiter:
        seq = self._seq = self._seq + 1
        hid = h.id
        by_holder = p.waiting_by_holder
        n = by_holder.get(hid, 0)
        counter = p.counters.get(hid, 0.0)
        if n == 0:
            # VTC: a holder becoming backlogged is lifted to the least backlogged counter,
            # so an idle holder cannot bank credit.
            least = p.least()
            if least is not None and least.counter > counter:
                counter = p.counters[hid] = least.counter
        by_holder[hid] = n + 1
        w = Waiter(hid, seq, now, h.base_priority, tokens, h.token_fraction, h.blocking, counter,
                   p.name, calls, requested, h.background, QUEUED, 0, 0, self._park_new(),
                   None, None, h)
        h.waiting.add(w)
        p.n_queued += 1
        if w.background:
            p.n_bg_queued += 1
        self._index(p, w, now, fresh=True)
        if p.entries > 64 + 8 * p.n_queued:
            p.maybe_compact()
        return w

    def _index(self, p: Pool, w: Waiter, now: float, fresh: bool = False) -> None:
        """(Re)insert ``w`` in the pool's heaps at its current priority and counter."""
        w.epoch += 1
        level = w.level = self._priority(w, now)
        p.index(w, level, self._rank(w))
        at = self._changes_at(w, now)
        if at is None:
            return
        if at <= now:
            at = math.nextafter(now, math.inf)
        if fresh:
            w.next_change = at
            if not p.add_arrival(w):
                return  # an earlier arrival changes first; the servicer already knows
        else:
            p.push_change(at, w)
        if at < self._sleep_until:
            self._kick_servicer()

    def _reindex_holder(self, h: Holder) -> None:
        touched = set()
        now = self._clock() if h.waiting else 0.0
        for w in h.waiting:
            w.base_priority, w.token_fraction, w.blocking = (
                h.base_priority, h.token_fraction, h.blocking)
            w.background = h.background
            if w.state == QUEUED:
                p = self._pools[w.pool]
                self._index(p, w, now)
                touched.add(p)
        for p in touched:
            self._dispatch(p, now)

    def _add_service(self, p: Pool, hid: str, delta: float, now: float) -> None:
        if hid not in p.counters or not delta:
            return
        counter = p.counters[hid] = p.counters[hid] + delta
        h = self._holders.get(hid)
        if h is not None and hid in p.waiting_by_holder:
            self._refresh_counter(p, h, counter, now)

    def _select(self, p: Pool, now: float) -> Waiter | None:
        """The next waiter to serve: the policy's choice unless a share guard applies."""
        if p.n_bg_queued and self._min_share > 0:
            if now - p.recent_at >= p.decay_step:
                p.decay(now, self._window)
            if p.recent_bg < self._min_share * p.recent_all:
                w = p.head(p.bg)
                if w is not None:
                    return w
        top = p.top()
        if top is None:
            return None
        least = p.least() if p.track_fair or len(p.level_order) > 1 else top
        if least is not None and top.counter - least.counter > self._slack:
            return least
        return top

    def _dispatch(self, p: Pool, now: float) -> None:
        """Grant waiters in order while the chosen one fits: the one scheduling loop.

        Per pass: apply due priority changes (aging), pick the next waiter
        (:meth:`_select`), park it if its holder is over the max share while
        others wait, stop if it does not fit (no bypass; a bucket refill wakes
        the servicer), else grant it.
        """
        if p.changes_due(now):
            for aged in p.pop_changed(now):
                self._index(p, aged, now)
        conc = p.concurrent
        while p.n_queued and (conc is None or p.in_use < conc):
            w = self._select(p, now)
            if w is None:  # pragma: no cover - n_queued says there is one
                break
            hid, tokens, calls = w.holder, w.tokens, w.calls
            if (p.max_tokens is not None or p.max_calls is not None) and p.over_share(
                    hid, tokens, calls) and p.others_waiting(hid):
                p.park(w)
                continue
            if (conc is not None and p.in_use + calls > conc) or (
                    (p.tpm is not None or p.rpm is not None) and not p.fits(tokens, calls, now)):
                at = p.refill_at = p.refill_time(tokens, calls, now)
                if at is not None and at < self._sleep_until:
                    self._kick_servicer()
                return
            # Grant: the waiter leaves the queue and its parked task is woken.
            p.unlink(w)
            w.state = GRANTED
            owner = w.owner if w.owner is not None else self._holder(hid)
            w.lease = self._grant(p, owner, tokens, calls, w.requested, now)
            self._wake(w.event)
        if p.n_parked and len(p.parked) == 1:
            # Only one holder is left waiting: the max share no longer applies to it.
            self._unpark(p, next(iter(p.parked)), now)
            self._dispatch(p, now)

    def _unpark(self, p: Pool, hid: str, now: float) -> None:
        for w in p.unpark(hid):
            self._index(p, w, now)

    def _abandon(self, w: Waiter) -> None:
        """The waiting coroutine was cancelled: give back whatever it holds or waits for."""
        if w.state == GRANTED:
            lease = w.lease
            if lease is not None and lease.active:
                self.release(lease.id)
        elif w.state in (QUEUED, PARKED):
            p = self._pools[w.pool]
            p.unlink(w)
            w.state = GONE
            self._dispatch(p, self._clock())

    # -- internals: grants and returns ----------------------------------------------------------
    def _grant(
        self, p: Pool, h: Holder, tokens: int, calls: int, requested: int, now: float
    ) -> Lease:
        p.in_use += calls
        if p.tpm is not None:
            p.tpm.level -= tokens
        if p.rpm is not None:
            p.rpm.level -= calls
        hid = h.id
        held = p.held_tokens
        held[hid] = held.get(hid, 0) + tokens
        held = p.held_calls
        held[hid] = held.get(hid, 0) + calls
        # Charge the grant to the holder's service counter now (VTC); settle corrects it.
        charge = self._cost(tokens, 0)
        counters = p.counters
        counter = counters[hid] = counters.get(hid, 0.0) + charge
        if hid in p.waiting_by_holder:
            self._refresh_counter(p, h, counter, now)
        if now - p.recent_at >= p.decay_step:
            p.decay(now, self._window)
        weight = charge if charge > 0 else 1.0
        p.recent_all += weight
        if h.background:
            p.recent_bg += weight
        expires_at = now + self._ttl
        lease = Lease(new_lease_id(), hid, p.name, tokens, calls, requested, now, expires_at,
                      charge)
        self._leases.add(lease)
        p.grants += 1
        p.n_leases += 1
        if expires_at < self._sleep_until:
            self._kick_servicer()
        return lease

    def _refresh_counter(self, p: Pool, h: Holder, counter: float, now: float) -> None:
        """The holder's other queued requests move with its counter."""
        for w in list(h.waiting):
            if w.pool == p.name and w.state == QUEUED:
                w.counter = counter
                self._index(p, w, now)

    def _end(self, lease: Lease, now: float, tokens_back: int, *, calls_back: bool) -> None:
        if lease.active:
            self._leases.remove(lease)
        p = self._pools[lease.pool]
        hid = lease.holder
        p.in_use -= lease.calls
        p.n_leases -= 1
        if tokens_back and p.tpm is not None:
            p.tpm.refill(now)
            p.tpm.give(tokens_back)
        if calls_back and p.rpm is not None:
            p.rpm.refill(now)
            p.rpm.give(lease.calls)
        held = p.held_tokens
        left = held.get(hid, 0) - lease.tokens
        if left > 0:
            held[hid] = left
        else:
            held.pop(hid, None)
        held = p.held_calls
        left = held.get(hid, 0) - lease.calls
        if left > 0:
            held[hid] = left
        else:
            held.pop(hid, None)
        held_for = now - lease.granted_at
        p.avg_hold_s = held_for if p.ended == 0 else (
            p.avg_hold_s + _HOLD_EWMA * (held_for - p.avg_hold_s))
        p.ended += 1
        if p.n_parked and hid in p.parked:
            self._unpark(p, hid, now)
        if p.n_queued or p.n_parked:
            self._dispatch(p, now)

    def _service(self, now: float) -> None:
        for lease in self._leases.pop_expired(now):
            self._expire(lease, now)
        for p in self._pools.values():
            refill = p.refill_at
            if p.changes_due(now) or (refill is not None and refill <= now):
                p.refill_at = None
                self._dispatch(p, now)

    def _expire(self, lease: Lease, now: float) -> None:
        p = self._pools[lease.pool]
        p.expired += 1
        data: dict[str, Any] = {"holder": lease.holder, "pool": lease.pool, "tokens": lease.tokens,
                "held_s": round(now - lease.granted_at, 3)}
        message = f"lease of {lease.holder} on {lease.pool} expired; capacity returned"
        if self._events is not None:
            self._events.emit("lease_expired", message, task_id=lease.holder, level="warning",
                              **data)
        else:
            _log.warning("lease_expired", message=message, **data)
        self._end(lease, now, lease.tokens, calls_back=True)

    def _next_deadline(self) -> float:
        deadline = self._leases.next_expiry() or math.inf
        for p in self._pools.values():
            aging = p.next_change()
            if aging is not None:
                deadline = min(deadline, aging)
            if p.refill_at is not None:
                deadline = min(deadline, p.refill_at)
        return deadline


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
