"""Global quota slices: one orchestrator's share of pools shared by several processes.

When N orchestrators share one provider quota (say 400,000 tokens per minute),
each one leases a *slice* of every global pool from a :class:`SliceBackend`
(Redis), as YouTube's Doorman does: the lease carries the orchestrator's
demand, the backend divides the capacity max-min fairly between the live
holders and never grants more than is free, and the lease expires unless it is
renewed.  The local allocator then subdivides the slice among the
orchestrator's own agents: :class:`GlobalQuota` reports every change of slice
size through ``on_slice(pool, tokens_per_minute)`` (wire it to the
allocator's ``set_capacity``), and asks ``demand(pool)`` before every renewal
how much this orchestrator could use (the orchestrator wires both, see
:mod:`scheduler.allocator._capacity`).

The holders' token buckets together never hold more than one bucket of the pool's
size: a slice that shrinks gives the level above its new size back to the pool
(``level(pool)`` reports it with each renewal), and a slice that grows takes the
unassigned capacity's level with it (``on_credit(pool, amount)``: add it to the
bucket).  Capacity nobody held yet comes full, so a fleet starts with the provider's
burst, not with empty buckets.

A holder granted less than its fair share (a newcomer while the others hold
everything, an idle orchestrator waking up) counts as a shortfall on the backend; every
holder that holds a slice polls that count each ``starved_poll_s`` and renews at once
when it grew, giving back what it holds above its own fair share -- instead of the
newcomer waiting up to ``renew_s`` for the others' next renewal.

A dead orchestrator stops renewing; its slice expires after ``slice_ttl_s``
and the others receive it at their next renewal.

Connection loss (``DistributedConfig.failure_mode``):

* ``closed`` (default): the current slice is used until it would have expired
  on the server (measured from the start of the last successful renewal, so
  never later than Redis's own expiry), then the slice drops to 0 — no new
  grants until Redis answers again.  Nothing is silently replaced by a
  per-process limit.
* ``open``: after that point the slice becomes the small local allowance
  ``fail_open_tokens_per_minute``.

Backend-neutral anyio; the Redis backend itself needs the asyncio backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc

from scheduler.config import DistributedConfig
from scheduler.core import StoreError, StoreUnavailableError, get_logger
from scheduler.store._ledger import SHORT_FRACTION, SliceBackend, SliceShortfalls

_log = get_logger("vibe_engine.quota")

SliceCallback = Callable[[str, int], None]
#: ``demand(pool)``: tokens per minute this orchestrator could use of ``pool`` now.
DemandSource = Callable[[str], int]
#: ``level(pool)``: what this orchestrator's bucket of ``pool`` holds now (None: unknown).
LevelSource = Callable[[str], float | None]


@dataclass(slots=True)
class _PoolState:
    capacity: int
    demand: int
    amount: int = 0
    fair_share: int = 0
    holders: int = 0
    valid_until: float = float("-inf")
    renewals: int = 0
    failures: int = 0
    degraded: bool = False
    #: The backend's count of short leases of this pool, as of our last lease.
    shortfalls: int = 0


@dataclass(frozen=True, slots=True)
class PoolSlice:
    """One pool as seen by :meth:`GlobalQuota.statistics`."""

    capacity: int
    demand: int
    amount: int
    fair_share: int
    holders: int
    renewals: int
    failures: int
    degraded: bool


@dataclass(frozen=True, slots=True)
class QuotaStatistics:
    holder: str
    pools: dict[str, PoolSlice] = field(default_factory=dict)


class GlobalQuota:
    """Keeps this orchestrator's slices of global pools leased and reports their size."""

    def __init__(
        self,
        backend: SliceBackend,
        capacities: Mapping[str, int],
        *,
        holder: str,
        config: DistributedConfig | None = None,
        on_slice: SliceCallback | None = None,
        demand: DemandSource | None = None,
        clock: Callable[[], float] = anyio.current_time,
        level: LevelSource | None = None,
        on_credit: SliceCallback | None = None,
    ) -> None:
        self.backend = backend
        self._shortfalls = backend if isinstance(backend, SliceShortfalls) else None
        self._level = level
        self._on_credit = on_credit
        self.holder = holder
        self.config = config or DistributedConfig()
        self._on_slice = on_slice
        self._demand = demand
        self._clock = clock
        self._pools = {p: _PoolState(c, c) for p, c in capacities.items()}

    def set_demand(self, pool: str, tokens_per_minute: int) -> None:
        """How much of ``pool`` this orchestrator could use now (sent at the next renewal)."""
        self._pools[pool].demand = max(int(tokens_per_minute), 0)

    def set_capacity(self, pool: str, tokens_per_minute: int) -> None:
        """Change a pool's global capacity (sent at the next renewal), e.g. to a lower
        limit the provider reported."""
        self._pools[pool].capacity = max(int(tokens_per_minute), 1)

    def slice(self, pool: str) -> int:
        return self._pools[pool].amount

    def statistics(self) -> QuotaStatistics:
        return QuotaStatistics(self.holder, {
            p: PoolSlice(s.capacity, s.demand, s.amount, s.fair_share, s.holders, s.renewals,
                         s.failures, s.degraded)
            for p, s in self._pools.items()
        })

    def _set(self, pool: str, state: _PoolState, amount: int) -> None:
        if amount != state.amount:
            state.amount = amount
            _log.debug("quota_slice_changed", pool=pool, holder=self.holder, amount=amount)
            if self._on_slice is not None:
                self._on_slice(pool, amount)

    async def renew_once(self) -> None:
        """Lease (or renew) every pool's slice once; apply the failure mode on errors."""
        cfg = self.config
        for pool, state in self._pools.items():
            if self._demand is not None and state.renewals:  # the first lease asks for all
                self.set_demand(pool, self._demand(pool))
            started = self._clock()
            try:
                grant = await self.backend.lease_slice(
                    pool, self.holder, demand=state.demand, capacity=state.capacity,
                    ttl_s=cfg.slice_ttl_s, level=self._level(pool) if self._level else None,
                )
            except StoreUnavailableError as exc:
                self._degrade(pool, state, exc)
                continue
            if state.degraded:
                _log.info("quota_slice_restored", pool=pool, holder=self.holder)
            state.degraded = False
            state.renewals += 1
            state.valid_until = started + cfg.slice_ttl_s
            state.fair_share, state.holders = grant.fair_share, grant.holders
            state.shortfalls = grant.shortfalls
            self._set(pool, state, grant.amount)
            if grant.credit > 0 and self._on_credit is not None:
                self._on_credit(pool, grant.credit)

    def _degrade(self, pool: str, state: _PoolState, exc: Exception) -> None:
        state.failures += 1
        if not state.degraded:
            _log.warning("quota_backend_unavailable", pool=pool, holder=self.holder,
                         error=str(exc), failure_mode=self.config.failure_mode)
        state.degraded = True
        if self._clock() < state.valid_until:
            return  # the slice we hold is still ours on the server
        fallback = (
            min(self.config.fail_open_tokens_per_minute, state.capacity)
            if self.config.failure_mode == "open" else 0
        )
        self._set(pool, state, fallback)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Renew every ``renew_s`` until cancelled; then give the slices back."""
        try:
            await self.renew_once()
            task_status.started()
            while True:
                await self._wait_next_renewal()
                await self.renew_once()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.socket_timeout_s):
                await self.release_all()

    async def _wait_next_renewal(self) -> None:
        """Until the next renewal: ``renew_s`` (or a degraded slice's expiry), but soon after
        a pool without a slice finds local work — an idle orchestrator that wakes up does not
        wait a whole ``renew_s`` for its share."""
        deadline = self._clock() + self._next_wait()
        poll = self.config.starved_poll_s
        while (now := self._clock()) < deadline:
            await anyio.sleep(min(deadline - now, poll) if self._demand else deadline - now)
            if self._starved() or await self._others_short():
                return  # at most one early renewal per poll

    def _starved(self) -> bool:
        """Has a pool with local work no slice, or one well short of its fair share?"""
        demand = self._demand
        return demand is not None and any(
            not state.degraded and demand(pool) > 0
            and (state.amount == 0 or state.amount < state.fair_share * SHORT_FRACTION)
            for pool, state in self._pools.items()
        )

    async def _others_short(self) -> bool:
        """Was another holder granted less than its fair share of a pool we hold a slice of,
        since our last lease?  (Renewing then gives back what we hold above ours.)"""
        held = [p for p, s in self._pools.items() if s.amount > 0 and not s.degraded]
        if self._shortfalls is None or not held:
            return False
        try:
            counts = await self._shortfalls.slice_shortfalls(held)
        except StoreError:  # only a hint: the next renewal notices an outage and applies
            return False  # the failure mode
        return any(n > self._pools[p].shortfalls for p, n in zip(held, counts, strict=True))

    def _next_wait(self) -> float:
        wait = self.config.renew_s
        now = self._clock()
        for state in self._pools.values():
            if state.degraded and state.valid_until > now:
                wait = min(wait, max(state.valid_until - now, 0.0) + 1e-3)
        return wait

    async def release_all(self) -> None:
        for pool, state in self._pools.items():
            with contextlib.suppress(StoreUnavailableError):  # else it expires on its own
                await self.backend.release_slice(pool, self.holder)
            state.valid_until = float("-inf")
            self._set(pool, state, 0)


@asynccontextmanager
async def open_global_quota(
    backend: SliceBackend,
    capacities: Mapping[str, int],
    *,
    holder: str,
    config: DistributedConfig | None = None,
    on_slice: SliceCallback | None = None,
    demand: DemandSource | None = None,
    clock: Callable[[], float] = anyio.current_time,
    level: LevelSource | None = None,
    on_credit: SliceCallback | None = None,
) -> AsyncIterator[GlobalQuota]:
    """Lease the slices once, keep renewing them in the background, release them on exit."""
    quota = GlobalQuota(backend, capacities, holder=holder, config=config, on_slice=on_slice,
                        demand=demand, clock=clock, level=level, on_credit=on_credit)
    async with anyio.create_task_group() as tg:
        await tg.start(quota.run)
        try:
            yield quota
        finally:
            tg.cancel_scope.cancel()
