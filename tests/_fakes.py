"""Test doubles of the tests only (plugin authors' ones live in ``scheduler.testing``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from scheduler.core import Completion, CompletionRequest, Usage
from scheduler.runtime import AgentContext
from scheduler.store import MemoryStore
from scheduler.store._ledger import SHORT_FRACTION, SliceGrant
from scheduler.testing import ScriptedProvider


class SlicedMemoryStore(MemoryStore):
    """A MemoryStore that also leases global-pool slices (the SliceBackend of Redis):
    every lease is granted ``min(share, demand)``; leases and releases are recorded."""

    def __init__(self, share: int) -> None:
        super().__init__()
        self.share = share
        self.leases: list[tuple[str, str, int, int]] = []
        self.released: list[tuple[str, str]] = []

    async def lease_slice(
        self, pool: str, holder: str, *, demand: int, capacity: int, ttl_s: float,
        level: float | None = None,
    ) -> SliceGrant:
        await anyio.lowlevel.checkpoint()
        self.leases.append((pool, holder, demand, capacity))
        amount = min(self.share, demand, capacity)
        return SliceGrant(pool, holder, amount, amount, 1, ttl_s)

    async def release_slice(self, pool: str, holder: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.released.append((pool, holder))


class BucketSlices:
    """In-memory slices of global pools as the Redis script ``LEASE_SLICE`` cuts them
    (max-min fair, expiring, never over capacity), with its unassigned level and its
    shortfall count (``scheduler/store/_redis_lua.py``); on ``clock`` (seconds)."""

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
        self.clock = clock
        self.grants: dict[str, dict[str, int]] = {}
        self.demands: dict[str, dict[str, int]] = {}
        self.expires: dict[str, dict[str, float]] = {}
        #: pool -> [free level, stamp (None: never leased), capacity, shortfalls]
        self.meta: dict[str, list[Any]] = {}

    def _free(self, pool: str, unassigned: float, now: float) -> float:
        free, at, _, _ = self.meta.setdefault(pool, [0.0, None, 0, 0])
        if at is None:
            return unassigned
        return float(min(unassigned, free + max(now - at, 0.0) * unassigned / 60.0))

    def lease(self, pool: str, holder: str, demand: int, cap: int, ttl_s: float,
              level: float | None) -> SliceGrant:
        now = self.clock()
        grants = self.grants.setdefault(pool, {})
        demands = self.demands.setdefault(pool, {})
        expires = self.expires.setdefault(pool, {})
        free = self._free(pool, max(cap - sum(grants.values()), 0), now)
        for h in [h for h, at in expires.items() if at <= now]:
            grants.pop(h, None), demands.pop(h, None), expires.pop(h)
        demands[holder], expires[holder] = demand, now + ttl_s
        ds = sorted(demands.values())
        left, lvl = float(cap), None
        for i, d in enumerate(ds):
            share = left / (len(ds) - i)
            if d > share:
                lvl = share
                break
            left -= d
        fair = math.floor(min(demand, demand if lvl is None else lvl))
        mine = grants.get(holder, 0)
        others = sum(grants.values()) - mine
        grant = max(0, min(fair, cap - others))
        grants[holder] = grant
        credit = 0
        if grant > mine:
            credit = math.floor(min(grant - mine, free))
            free -= credit
        else:
            free += max(min(level or 0.0, mine) - grant, 0)
        meta = self.meta[pool]
        if grant < fair * SHORT_FRACTION:
            meta[3] += 1
        meta[:3] = [min(free, max(cap - others - grant, 0)), now, cap]
        return SliceGrant(pool, holder, grant, fair, len(ds), ttl_s, credit, meta[3])

    def release(self, pool: str, holder: str) -> None:
        meta = self.meta.setdefault(pool, [0.0, None, 0, 0])
        now = self.clock()
        meta[0] = self._free(pool, max(meta[2] - sum(self.grants.get(pool, {}).values()), 0),
                             now)
        meta[1] = now
        for table in (self.grants, self.demands, self.expires):
            table.get(pool, {}).pop(holder, None)


class BucketSlicingStore(MemoryStore):
    """One orchestrator's store; its slices come from a shared :class:`BucketSlices`."""

    def __init__(self, shared: BucketSlices) -> None:
        super().__init__()
        self.shared = shared

    async def lease_slice(self, pool: str, holder: str, *, demand: int, capacity: int,
                          ttl_s: float, level: float | None = None) -> SliceGrant:
        await anyio.lowlevel.checkpoint()
        return self.shared.lease(pool, holder, demand, capacity, ttl_s, level)

    async def release_slice(self, pool: str, holder: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.shared.release(pool, holder)

    async def slice_shortfalls(self, pools: Sequence[str]) -> list[int]:
        await anyio.lowlevel.checkpoint()
        return [self.shared.meta.get(p, [0, None, 0, 0])[3] for p in pools]


class Clocked(ScriptedProvider):
    """Records when each call starts (0.5 s each)."""

    def __init__(self, starts: list[float]) -> None:
        super().__init__(latency_s=0.5)
        self.starts = starts

    async def complete(self, request: CompletionRequest) -> Completion:
        self.starts.append(anyio.current_time())
        await anyio.sleep(self.latency_s)
        return Completion("ok", Usage(10, 5), request.model)


class Busy:
    """Twenty one-token calls."""

    async def run(self, ctx: AgentContext) -> str:
        for _ in range(20):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=1)
        return "ok"
