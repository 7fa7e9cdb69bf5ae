"""Global quota slices: fair leases of a shared pool between orchestrators (R5.3, R5.4
across processes), their expiry, and the configured failure mode."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import anyio
import pytest
import redis.asyncio as aioredis

from scheduler.allocator import GlobalQuota
from scheduler.allocator._quota import open_global_quota
from scheduler.config import DistributedConfig
from scheduler.core import StoreUnavailableError
from scheduler.store._ledger import SliceGrant
from scheduler.store._redis import RedisStore
from tests._redis_helpers import REDIS_URL


class FlakyBackend:
    """A SliceBackend that grants ``share`` while up and raises while down."""

    def __init__(self, share: int) -> None:
        self.share = share
        self.up = True
        self.leases: list[tuple[str, int]] = []
        self.released: list[str] = []

    async def lease_slice(
        self, pool: str, holder: str, *, demand: int, capacity: int, ttl_s: float,
        level: float | None = None,
    ) -> SliceGrant:
        await anyio.lowlevel.checkpoint()
        if not self.up:
            raise StoreUnavailableError("down")
        self.leases.append((holder, demand))
        amount = min(self.share, demand)
        return SliceGrant(pool, holder, amount, amount, 1, ttl_s)

    async def release_slice(self, pool: str, holder: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.released.append(holder)


CFG = DistributedConfig(slice_ttl_s=15.0, renew_s=5.0, fail_open_tokens_per_minute=1_000)


async def test_slice_reported_renewed_and_released() -> None:
    """The slice size reaches the local allocator through on_slice; demand is sent on
    each renewal; the slice is given back on exit."""
    seen: list[tuple[str, int]] = []
    backend = FlakyBackend(share=40_000)

    async with open_global_quota(backend, {"tpm": 100_000}, holder="o1", config=CFG,
                                 on_slice=lambda p, n: seen.append((p, n))) as q:
        assert q.slice("tpm") == 40_000
        q.set_demand("tpm", 10_000)
        await anyio.sleep(5.5)
        assert q.slice("tpm") == 10_000
        assert q.statistics().pools["tpm"].renewals == 2
    assert backend.released == ["o1"]
    assert seen == [("tpm", 40_000), ("tpm", 10_000), ("tpm", 0)]
    assert backend.leases == [("o1", 100_000), ("o1", 10_000)]


@pytest.mark.parametrize(("mode", "fallback"), [("closed", 0), ("open", 1_000)])
async def test_backend_down_keeps_slice_until_expiry_then_failure_mode(
    mode: str, fallback: int,
) -> None:
    """Redis down: the held slice is used until it would expire on the server, then it
    drops to 0 (fail-closed: no new grants) or to the small local allowance (fail-open);
    when Redis is back the fair slice returns."""
    cfg = CFG.model_copy(update={"failure_mode": mode})
    backend = FlakyBackend(share=40_000)
    sizes: list[tuple[float, int]] = []

    q = GlobalQuota(backend, {"tpm": 100_000}, holder="o1", config=cfg,
                    on_slice=lambda p, n: sizes.append((anyio.current_time(), n)))
    async with anyio.create_task_group() as tg:
        t0 = anyio.current_time()
        await tg.start(q.run)
        await anyio.sleep(1.0)
        backend.up = False
        await anyio.sleep(13.0)  # renewals at 5 and 10 fail; lease still valid
        assert q.slice("tpm") == 40_000
        await anyio.sleep(2.5)  # expired at t0 + 15 (from the last good renewal at t0)
        assert q.slice("tpm") == fallback
        assert q.statistics().pools["tpm"].degraded
        backend.up = True
        await anyio.sleep(5.0)
        assert q.slice("tpm") == 40_000
        tg.cancel_scope.cancel()
    expiry = [t - t0 for t, n in sizes if n == fallback and n != 40_000]
    assert expiry and expiry[0] == pytest.approx(15.0, abs=0.01)


# -- the Lua grant on the real Redis ---------------------------------------------------------


async def _grants(s: RedisStore, pool: str) -> dict[str, int]:
    """Current grants of ``pool`` by holder (expired ones included until the next lease)."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        h = cast(dict[str, str], await client.hgetall(s.key("pool", pool, "grant")))
    finally:
        await client.aclose()
    return {k: int(v) for k, v in h.items()}


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r5_3_slices_are_max_min_fair_and_never_overcommitted(
    redis_ns: str, tmp_path: Path
) -> None:
    """Demands 100/1000/1000 of 900: the small one gets its 100, the others 400 each; a
    newcomer only gets what is free until the others renew down to their fair share."""
    now = [0]

    s = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "sp",
                   now_ms=lambda: now[0])
    await s.open()

    async def lease(h: str, demand: int) -> SliceGrant:
        return await s.lease_slice("tpm", h, demand=demand, capacity=900, ttl_s=10)

    assert (await lease("a", 1000)).amount == 900
    b = await lease("b", 1000)
    assert (b.amount, b.fair_share, b.holders) == (0, 450, 2)  # nothing free yet
    assert (await lease("a", 1000)).amount == 450
    assert (await lease("b", 1000)).amount == 450
    assert (await lease("c", 100)).amount == 0
    assert (await lease("a", 1000)).amount == 400
    assert (await lease("b", 1000)).amount == 400
    assert (await lease("c", 100)).amount == 100
    assert sum((await _grants(s, "tpm")).values()) <= 900
    await s.aclose()


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r5_4_dead_orchestrators_slice_expires_and_returns(
    redis_ns: str, tmp_path: Path,
) -> None:
    """A holder that stops renewing loses its slice after the TTL; the others get it."""
    now = [0]

    s = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "sp",
                   now_ms=lambda: now[0])
    await s.open()
    for _ in range(2):
        for h in ("a", "b", "c"):
            await s.lease_slice("tpm", h, demand=900, capacity=900, ttl_s=3)
    assert await _grants(s, "tpm") == {"a": 300, "b": 300, "c": 300}
    for _ in range(2):  # c died: a and b keep renewing every second
        now[0] += 1_000
        for h in ("a", "b"):
            await s.lease_slice("tpm", h, demand=900, capacity=900, ttl_s=3)
    assert (await _grants(s, "tpm"))["a"] == 300  # c's lease is still valid
    now[0] += 1_500
    for _ in range(2):
        for h in ("a", "b"):
            g = await s.lease_slice("tpm", h, demand=900, capacity=900, ttl_s=3)
    assert await _grants(s, "tpm") == {"a": 450, "b": 450}
    assert g.holders == 2
    await s.release_slice("tpm", "a")
    assert (await s.lease_slice("tpm", "b", demand=900, capacity=900, ttl_s=3)).amount == 900
    await s.aclose()


async def test_an_idle_orchestrator_waking_up_asks_for_its_slice_at_once() -> None:
    """A pool whose slice dropped to 0 (nothing to do) is asked for again within
    ``starved_poll_s`` once local work appears, not at the next ``renew_s``; while it stays
    starved it asks at most once per poll."""
    backend = FlakyBackend(share=40_000)
    demand = {"tpm": 0}

    granted = anyio.Event()
    q = GlobalQuota(backend, {"tpm": 100_000}, holder="o1", config=CFG,
                    demand=lambda pool: demand[pool],
                    on_slice=lambda p, n: granted.set() if n == 30_000 else None)
    async with anyio.create_task_group() as tg:
        await tg.start(q.run)
        await anyio.sleep(5.5)  # the first renewal with no demand: slice 0
        assert q.slice("tpm") == 0
        demand["tpm"] = 30_000
        woke = anyio.current_time()
        await granted.wait()
        waited = anyio.current_time() - woke
        leases_before = len(backend.leases)
        backend.share = 0  # the others hold everything: it stays starved
        demand["tpm"] = 50_000
        await anyio.sleep(5.0)
        tg.cancel_scope.cancel()
    asks = len(backend.leases) - leases_before
    assert waited <= CFG.starved_poll_s + 0.02
    assert asks <= 5.0 / CFG.starved_poll_s + 2  # polled, not spinning
