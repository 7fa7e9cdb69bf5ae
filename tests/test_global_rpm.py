"""A global requests-per-minute quota shared by several orchestrators
(``distributed.global_pools.<pool>.requests_per_minute``, or on a shared store the pool's own
``requests_per_minute``, shared by default).

Three orchestrators run in one process on the virtual clock; their stores share a
slice backend that cuts the quota max-min fairly the way the Redis script does
(``scheduler/store/_redis_lua.py`` LEASE_SLICE), with expiring slices.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from scheduler import Limits, TaskSpec, VibeConfig
from scheduler.runtime import Orchestrator
from scheduler.store import MemoryStore
from scheduler.store._ledger import SliceGrant
from scheduler.testing import ScriptedProvider, build_orchestrator
from tests._fakes import Busy, Clocked

pytestmark = pytest.mark.anyio


class SharedSlices:
    """Max-min fair slices with expiry, as LEASE_SLICE computes them."""

    def __init__(self) -> None:
        self.grants: dict[str, dict[str, int]] = {}
        self.demands: dict[str, dict[str, int]] = {}
        self.expires: dict[str, dict[str, float]] = {}

    def lease(self, pool: str, holder: str, demand: int, cap: int, ttl_s: float) -> SliceGrant:
        now = anyio.current_time()
        grants = self.grants.setdefault(pool, {})
        demands = self.demands.setdefault(pool, {})
        expires = self.expires.setdefault(pool, {})
        for h in [h for h, at in expires.items() if at <= now]:
            grants.pop(h, None), demands.pop(h, None), expires.pop(h)
        demands[holder], expires[holder] = demand, now + ttl_s
        ds = sorted(demands.values())
        left, level = float(cap), None
        for i, d in enumerate(ds):
            share = left / (len(ds) - i)
            if d > share:
                level = share
                break
            left -= d
        fair = math.floor(min(demand, demand if level is None else level))
        others = sum(g for h, g in grants.items() if h != holder)
        grant = max(0, min(fair, cap - others))
        grants[holder] = grant
        return SliceGrant(pool, holder, grant, fair, len(ds), ttl_s)

    def release(self, pool: str, holder: str) -> None:
        for table in (self.grants, self.demands, self.expires):
            table.get(pool, {}).pop(holder, None)


class SlicingStore(MemoryStore):
    """One orchestrator's store; its slices come from the shared backend."""

    def __init__(self, shared: SharedSlices) -> None:
        super().__init__()
        self.shared = shared

    async def lease_slice(self, pool: str, holder: str, *, demand: int, capacity: int,
                          ttl_s: float, level: float | None = None) -> SliceGrant:
        await anyio.lowlevel.checkpoint()
        return self.shared.lease(pool, holder, demand, capacity, ttl_s)

    async def release_slice(self, pool: str, holder: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.shared.release(pool, holder)




#: Two ways to say "10 requests a minute for the account": a global pool, or (on a
#: shared store, by default) the pool's own figure.
QUOTAS: dict[str, dict[str, Any]] = {
    "global_pools": {"distributed": {"global_pools": {"anthropic": {"requests_per_minute": 10}}}},
    "pool_default": {"allocator": {"pools": {"anthropic": {
        "requests_per_minute": 10, "tokens_per_minute": None}}}},
}


def _orchestrator(tmp_path: Path, name: str, shared: SharedSlices,
                  starts: list[float], quota: str = "global_pools") -> Orchestrator:
    extra = QUOTAS[quota]
    config = VibeConfig.model_validate({
        "state_dir": tmp_path / name, "store": "memory", "session_id": name,
        "observe": {"status_interval_s": None, "history": False},
        **extra,
        "distributed": {**extra.get("distributed", {}),
                        "orchestrator_id": name, "renew_s": 1.0, "slice_ttl_s": 3.0},
    })
    return build_orchestrator({"busy": Busy}, config=config, provider=Clocked(starts),
                              store=SlicingStore(shared))


@pytest.mark.parametrize("quota", sorted(QUOTAS))
async def test_global_requests_per_minute_bound_three_orchestrators(
    tmp_path: Path, quota: str
) -> None:
    """R5.4 across processes, #21 scale-out: three orchestrators under a global 10
    requests/minute make at most 10 calls per minute in total since they started (each
    runs 3 busy tasks of 20 calls), and each one gets calls -- whether the quota is a
    ``distributed.global_pools`` entry or only the pool's own ``requests_per_minute``
    (shared by default on a shared store: no replica multiplies the account's quota)."""
    shared = SharedSlices()
    starts: list[float] = []
    orchs = [_orchestrator(tmp_path, f"o{i}", shared, starts, quota) for i in range(3)]
    specs = [TaskSpec(id=f"t{j}", agent="busy", prompt="What is it?",
                      budget=Limits(time_s=3600)) for j in range(3)]
    with anyio.move_on_after(300):
        async with anyio.create_task_group() as tg:
            for orch in orchs:
                tg.start_soon(orch.run, specs)
    assert len(starts) >= 40  # 300 s at about 9 calls a minute: the quota is used
    # the request buckets start empty and the slices never sum above 10 a minute, so by
    # any time t they made at most 10 × t/60 calls together: 10 in the first minute, 20 in
    # the first two, ...
    for t in starts:
        made = sum(1 for s in starts if s <= t)
        assert made <= 10 * t / 60 + 1e-6, (t, made)
    # a bucket may carry part of a call into the next minute: any 60 s holds at most one
    # more call per orchestrator
    for t in starts:
        assert sum(1 for s in starts if t <= s < t + 60) <= 10 + len(orchs), t
    assert all(o.tracker.session.totals.calls > 0 for o in orchs)  # each got a share


def test_global_pool_needs_a_quota() -> None:
    from scheduler import ConfigError
    from scheduler.config import config_from_dict

    with pytest.raises(ConfigError, match=r"distributed\.global_pools"):
        config_from_dict({"distributed": {"global_pools": {"anthropic": {}}}})


async def test_share_pool_quotas_false_keeps_the_pool_per_process(tmp_path: Path) -> None:
    """R5.4: with ``distributed.share_pool_quotas = false`` a shared store leaves a pool
    that ``global_pools`` does not name per process (no quota, the configured figure)."""
    config = VibeConfig.model_validate({
        "state_dir": tmp_path, "store": "memory", "session_id": "s",
        **QUOTAS["pool_default"],
        "distributed": {"share_pool_quotas": False},
    })
    orch = build_orchestrator({"busy": Busy}, config=config, provider=ScriptedProvider(),
                              store=SlicingStore(SharedSlices()))
    assert orch.quota is None
    assert orch.allocator.statistics().pools["anthropic"].requests_per_minute == 10
