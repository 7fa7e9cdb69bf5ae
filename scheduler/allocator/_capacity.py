"""How much of each provider pool this orchestrator's allocator may use.

Up to three things bound a pool's tokens per minute:

* the configuration (``allocator.pools.<pool>``), the starting point;
* the limits the provider reports in its ``anthropic-ratelimit-*`` response
  headers: they may *lower* the configured tokens and requests per minute (the
  provider enforces them), never raise them — the configured figure is the
  user's cap, and an account allowing 2M tokens a minute does not make a
  configured 50k one 2M;
* for a *global* pool (on a ``redis://`` store: one named in ``distributed.global_pools``,
  or, with ``distributed.share_pool_quotas`` (the default), any pool with a rate limit,
  its own figures then being the global ones),
  this orchestrator's slice of the shared quota, leased through
  :class:`~scheduler.allocator._quota.GlobalQuota`.  The slice replaces the configured
  tokens per minute; with ``requests_per_minute`` set there, requests per minute are
  sliced the same way (slice ``<pool>:rpm``, demand: calls in flight and waiting per
  average hold); concurrency stays local.

The allocator gets the smallest that applies: ``min(slice, learned)`` for a
global pool, ``min(configured, learned)`` otherwise (``None``, not limited, is
the largest).  A provider limit below a
global pool's configured capacity also lowers the capacity the slices are cut
from.

The demand sent with each slice renewal is the pool's outstanding tokens
(held in leases plus requested by waiters) turned into a rate with the
average lease hold (Little's law): ``outstanding × 60 ÷ hold`` tokens per
minute — what the orchestrator would use if nothing made it wait.

A slice of 0 (a newcomer before the others have shrunk, an idle
orchestrator, or Redis gone past the slice's expiry with ``failure_mode =
"closed"``) closes the pool: the allocator's ``tokens_per_minute=0`` makes
every request that needs tokens wait until a slice arrives.
"""

from __future__ import annotations

import math
import os
import secrets
import socket

from scheduler.allocator._allocator import Allocator
from scheduler.allocator._quota import GlobalQuota
from scheduler.config import GlobalPoolConfig, VibeConfig
from scheduler.core import Hook, RateLimitInfo, get_logger
from scheduler.store import Store
from scheduler.store._ledger import SliceBackend

_log = get_logger("vibe_engine.capacity")

#: The hold assumed before any lease of a pool has ended (LLM calls take seconds).
UNKNOWN_HOLD_S = 1.0
#: The allocator's "closed" capacity, for a slice of 0.
CLOSED_TOKENS_PER_MINUTE = 0
CLOSED_REQUESTS_PER_MINUTE = 0
#: Suffix of the slice name of a pool's global requests per minute.
RPM_SUFFIX = ":rpm"


def rpm_slice(pool: str) -> str:
    """The slice name of ``pool``'s global requests-per-minute quota."""
    return pool + RPM_SUFFIX


def pool_of_slice(name: str) -> str:
    """The pool a slice name belongs to (``name`` itself for a tokens slice)."""
    return name[: -len(RPM_SUFFIX)] if name.endswith(RPM_SUFFIX) else name


def default_orchestrator_id() -> str:
    """``<host>-<pid>-<random>``: unique among orchestrators sharing a namespace."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"{host or 'host'}-{os.getpid()}-{secrets.token_hex(3)}"


def shared_pools(config: VibeConfig) -> dict[str, GlobalPoolConfig]:
    """The pools whose quotas all orchestrators on a shared store split between them:
    those ``distributed.global_pools`` names, and with ``share_pool_quotas`` every other
    pool with a rate limit, at its own figures (concurrency stays per process)."""
    dist = config.distributed
    shared: dict[str, GlobalPoolConfig] = {}
    if dist.share_pool_quotas:
        for name, pool in config.allocator.pools.items():
            if pool.tokens_per_minute is not None or pool.requests_per_minute is not None:
                shared[name] = GlobalPoolConfig(tokens_per_minute=pool.tokens_per_minute,
                                                requests_per_minute=pool.requests_per_minute)
    shared.update(dist.global_pools)
    return shared


class PoolCapacity:
    """Keeps the allocator's pool capacities at min(configured/learned, global slice)."""

    def __init__(self, allocator: Allocator, config: VibeConfig) -> None:
        self.allocator = allocator
        self.config = config
        self._pools = dict(config.allocator.pools)
        #: The pool every model call leases from (the gateway uses the allocator's default).
        self.default_pool = next(iter(self._pools), None)
        self._slices: dict[str, int] = {}
        self._rpm_slices: dict[str, int] = {}
        self._learned_tpm: dict[str, int] = {}
        self._learned_rpm: dict[str, int] = {}
        self._applied: dict[str, tuple[int | None, int | None]] = {}
        self.quota: GlobalQuota | None = None
        #: The pools shared by all orchestrators, once :meth:`global_quota` found a shared store.
        self._global: dict[str, GlobalPoolConfig] = {}
        #: Called with the pool's name when the allocator got a new capacity for it (a new
        #: slice, a learned limit): ``status.json`` shows it without waiting out a back-off.
        self.on_change: Hook[[str]] = Hook()

    # -- wiring -----------------------------------------------------------------------------
    def global_quota(self, store: Store, *, holder: str | None = None) -> GlobalQuota | None:
        """The quota of the configured global pools on ``store``, or None (nothing global).

        Closes the global pools until the first slice arrives; run the quota
        (``await task_group.start(quota.run)``) before any task asks for a lease.
        """
        dist = self.config.distributed
        if not isinstance(store, SliceBackend):
            if dist.global_pools:
                _log.warning("global_pools_ignored", store=self.config.store,
                             pools=sorted(dist.global_pools),
                             reason="global pools need a shared store (store = 'redis://...')")
            return None
        self._global = shared_pools(self.config)
        if not self._global:
            return None
        capacities: dict[str, int] = {}
        for pool, glob in self._global.items():
            if glob.tokens_per_minute is not None:
                self._slices[pool] = 0
                capacities[pool] = glob.tokens_per_minute
            if glob.requests_per_minute is not None:
                self._rpm_slices[pool] = 0
                capacities[rpm_slice(pool)] = glob.requests_per_minute
            self._apply(pool)
        self.quota = GlobalQuota(
            store, capacities,
            holder=holder or dist.orchestrator_id or default_orchestrator_id(),
            config=dist, on_slice=self.on_slice, demand=self.demand_per_minute,
            level=self.bucket_level, on_credit=self.on_credit,
        )
        return self.quota

    # -- inputs -----------------------------------------------------------------------------
    def on_slice(self, name: str, per_minute: int) -> None:
        """``GlobalQuota`` reports this orchestrator's new slice of a pool's tokens per
        minute (``name`` is the pool) or requests per minute (``<pool>:rpm``)."""
        pool = pool_of_slice(name)
        slices = self._rpm_slices if name != pool else self._slices
        slices[pool] = max(int(per_minute), 0)
        self._apply(pool)

    def on_credit(self, name: str, amount: int) -> None:
        """A grown slice brings ``amount`` of the pool's unassigned level into our bucket."""
        pool = pool_of_slice(name)
        credit = (float(amount), 0.0) if name == pool else (0.0, float(amount))
        self.allocator.set_capacity(pool, credit=credit)

    def bucket_level(self, name: str) -> float | None:
        """What the allocator's bucket of a slice (tokens, or ``<pool>:rpm``) holds now."""
        pool = pool_of_slice(name)
        stats = self.allocator.statistics().pools.get(pool)
        if stats is None:
            return None
        return stats.tokens_available if name == pool else stats.requests_available

    def on_rate_limits(self, source: str, info: RateLimitInfo) -> None:
        """The provider reports limits from response headers (``source``: a pool or a model
        tier; a tier maps to the default pool, which every model call leases from)."""
        pool = source if source in self._pools else self.default_pool
        if pool is None:
            return
        if info.tokens_limit is not None and info.tokens_limit > 0:
            self._learned_tpm[pool] = info.tokens_limit
            glob = self._global.get(pool)
            if self.quota is not None and glob is not None and glob.tokens_per_minute:
                self.quota.set_capacity(pool, min(glob.tokens_per_minute, info.tokens_limit))
        if info.requests_limit is not None and info.requests_limit > 0:
            self._learned_rpm[pool] = info.requests_limit
            glob = self._global.get(pool)
            if self.quota is not None and glob is not None and glob.requests_per_minute:
                self.quota.set_capacity(rpm_slice(pool),
                                        min(glob.requests_per_minute, info.requests_limit))
        self._apply(pool)

    def demand_per_minute(self, name: str) -> int:
        """The demand :class:`GlobalQuota` sends for a slice (tokens or requests)."""
        pool = pool_of_slice(name)
        if name == pool:
            return self.demand_tokens_per_minute(pool)
        return self.demand_requests_per_minute(pool)

    def demand_requests_per_minute(self, pool: str) -> int:
        """Requests per minute this orchestrator could make of ``pool`` now: its calls in
        flight and waiting, each repeated every average hold."""
        d = self.allocator.demand(pool)
        calls = d.waiting + self.allocator.statistics().pools[pool].calls_in_use
        if calls <= 0:
            return 0
        hold = d.avg_hold_s if d.avg_hold_s > 0 else UNKNOWN_HOLD_S
        return math.ceil(calls * 60.0 / hold)

    def demand_tokens_per_minute(self, pool: str) -> int:
        """What this orchestrator could use of ``pool`` now (see the module docstring)."""
        d = self.allocator.demand(pool)
        outstanding = d.held_tokens + d.waiting_tokens
        if outstanding <= 0:
            return 0
        hold = d.avg_hold_s if d.avg_hold_s > 0 else UNKNOWN_HOLD_S
        return math.ceil(outstanding * 60.0 / hold)

    # -- output -----------------------------------------------------------------------------
    def effective(self, pool: str) -> tuple[int | None, int | None]:
        """(tokens per minute, requests per minute) the allocator should have for ``pool``."""
        cfg = self._pools.get(pool)
        learned = self._learned_tpm.get(pool)
        rpm = _lower(cfg.requests_per_minute if cfg else None, self._learned_rpm.get(pool))
        if pool in self._rpm_slices:  # a global request quota: at most our slice of it
            cut = self._rpm_slices[pool]
            rpm = max(cut if rpm is None else min(rpm, cut), CLOSED_REQUESTS_PER_MINUTE)
        if pool in self._slices:
            tpm = _lower(self._slices[pool], learned)
            return max(tpm or 0, CLOSED_TOKENS_PER_MINUTE), rpm
        return _lower(cfg.tokens_per_minute if cfg else None, learned), rpm

    def _apply(self, pool: str) -> None:
        tpm, rpm = self.effective(pool)
        if self._applied.get(pool) == (tpm, rpm):
            return
        self._applied[pool] = (tpm, rpm)
        self.allocator.set_capacity(pool, tokens_per_minute=tpm, requests_per_minute=rpm)
        self.on_change(pool)
        _log.info("pool_capacity_changed", pool=pool, tokens_per_minute=tpm,
                  requests_per_minute=rpm, slice=self._slices.get(pool),
                  learned_tokens_per_minute=self._learned_tpm.get(pool))


def _lower(cap: int | None, learned: int | None) -> int | None:
    """A provider's limit may lower the user's cap, never raise it (``None``: no limit)."""
    if learned is None:
        return cap
    return learned if cap is None else min(cap, learned)
