"""Pool capacities in the orchestrator: global quota slices (R5.3/R5.4 across processes)
and provider-reported limits, combined as the smaller of the two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from agents.builtin import QuestionAnswerAgent
from scheduler import TaskSpec, VibeConfig
from scheduler.allocator import Allocator, PoolCapacity
from scheduler.allocator._capacity import CLOSED_TOKENS_PER_MINUTE, UNKNOWN_HOLD_S
from scheduler.config import AllocatorConfig, GlobalPoolConfig, PoolConfig
from scheduler.core import ConfigError, RateLimitInfo
from scheduler.runtime import Orchestrator
from scheduler.store import MemoryStore, Store
from scheduler.testing import ScriptedProvider, build_orchestrator
from tests._fakes import SlicedMemoryStore

GLOBAL = {"global_pools": {"anthropic": {"tokens_per_minute": 1_200_000}},
          "orchestrator_id": "o1"}


def _config(tmp_path: Path, **extra: Any) -> VibeConfig:
    return VibeConfig.model_validate({
        "state_dir": tmp_path, "store": "memory", "session_id": "s1",
        "observe": {"status_interval_s": None, "history": False},
        **extra,
    })


def _orch(config: VibeConfig, store: Store, provider: Any) -> Orchestrator:
    return build_orchestrator({"qa": QuestionAnswerAgent}, config=config, provider=provider,
                              store=store)


def _tpm(orch: Orchestrator) -> int | None:
    return orch.allocator.statistics().pools["anthropic"].tokens_per_minute


async def test_r5_3_orchestrator_subdivides_only_its_global_slice(tmp_path: Path) -> None:
    """A global pool on a slice-leasing store: the allocator is closed until the first
    slice, then holds exactly the slice; the waiting queue is sent as demand at each
    renewal; the slice is given back when the run ends."""
    store = SlicedMemoryStore(share=60_000)
    cfg = _config(tmp_path, distributed={**GLOBAL, "renew_s": 1.0, "slice_ttl_s": 3.0})
    seen: list[int | None] = []

    orch = _orch(cfg, store, ScriptedProvider(latency_s=2.0, prompt=900, completion=100))
    assert orch.quota is not None
    assert _tpm(orch) == CLOSED_TOKENS_PER_MINUTE

    async def probe() -> None:
        while True:
            seen.append(_tpm(orch))
            await anyio.sleep(0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(probe)
        report = await orch.run([TaskSpec(id=f"q{i}", agent="qa", prompt="What?",
                                          params={"max_tokens": 1000})
                                 for i in range(40)])
        tg.cancel_scope.cancel()
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    assert 60_000 in seen and max(v or 0 for v in seen) == 60_000
    assert store.leases[0] == ("anthropic", "o1", 1_200_000, 1_200_000)  # first: ask for all
    # later renewals carry the backlog: outstanding tokens × 60 ÷ hold
    assert any(demand > 60_000 for _, _, demand, _ in store.leases[1:])
    assert store.released == [("anthropic", "o1")]


async def test_non_redis_store_ignores_global_pools(tmp_path: Path) -> None:
    """With a store that cannot lease slices nothing changes: the configured capacity
    stays, and a warning says why the global pools are ignored."""
    cfg = _config(tmp_path, distributed=GLOBAL)

    with capture_logs() as logs:
        orch = _orch(cfg, MemoryStore(), ScriptedProvider())
        assert orch.quota is None
        assert _tpm(orch) == 400_000
        report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What?")])
    assert report.outcomes["q"].status == "completed"
    assert _tpm(orch) == 400_000
    logs = logs
    assert [e for e in logs if e["event"] == "global_pools_ignored"]


def test_global_pools_must_name_allocator_pools(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not allocator pools"):
        from scheduler.config import config_from_dict

        config_from_dict({"distributed": {"global_pools": {"openai": {"tokens_per_minute": 1}}}})


async def test_learned_limits_replace_local_and_cap_the_global_slice(tmp_path: Path) -> None:
    """Limits from response headers lower (never raise) a local pool's configured
    per-minute capacities; for a global pool the allocator gets min(slice, learned), a slice of 0
    closes the pool, and a learned limit below the global capacity lowers the capacity
    the slices are cut from.  (``local`` stays per process: ``share_pool_quotas`` off.)"""
    cfg = _config(tmp_path, distributed={**GLOBAL, "share_pool_quotas": False},
                  allocator=AllocatorConfig(pools={
        "anthropic": PoolConfig(), "local": PoolConfig(tokens_per_minute=50_000)}))
    alloc = Allocator(cfg.allocator)
    cap = PoolCapacity(alloc, cfg)
    quota = cap.global_quota(SlicedMemoryStore(share=1))
    assert quota is not None

    def pools() -> dict[str, tuple[int | None, int | None]]:
        return {n: (p.tokens_per_minute, p.requests_per_minute)
                for n, p in alloc.statistics().pools.items()}

    cap.on_rate_limits("local", RateLimitInfo(tokens_limit=80_000, requests_limit=40))
    assert pools()["local"] == (50_000, 40)  # 80,000 would raise the configured 50,000
    cap.on_rate_limits("local", RateLimitInfo(tokens_limit=30_000))
    assert pools()["local"] == (30_000, 40)
    cap.on_slice("anthropic", 300_000)
    assert pools()["anthropic"] == (300_000, 1_000)
    cap.on_rate_limits("sonnet", RateLimitInfo(tokens_limit=200_000))  # a tier: default pool
    assert pools()["anthropic"] == (200_000, 1_000)
    assert quota.statistics().pools["anthropic"].capacity == 200_000
    cap.on_slice("anthropic", 150_000)
    assert pools()["anthropic"] == (150_000, 1_000)
    cap.on_slice("anthropic", 0)
    assert pools()["anthropic"] == (CLOSED_TOKENS_PER_MINUTE, 1_000)
    assert pools()["local"] == (30_000, 40)


async def test_demand_is_outstanding_tokens_as_a_rate() -> None:
    """Demand = (tokens held + tokens requested by waiters) × 60 ÷ average hold; waiters
    count with what they asked for, not what the max share cut them to."""
    cfg = VibeConfig(allocator=AllocatorConfig(pools={"anthropic": PoolConfig(
        tokens_per_minute=10_000, requests_per_minute=None, concurrent=None)}))

    alloc = Allocator(cfg.allocator)
    cap = PoolCapacity(alloc, cfg)
    async with anyio.create_task_group() as tg:
        tg.start_soon(alloc.run)
        for h in ("a", "b", "c"):
            alloc.register(h)
        await alloc.acquire("a", tokens=5_000)  # the max share: half of 10,000
        await alloc.acquire("b", tokens=5_000)
        tg.start_soon(lambda: alloc.acquire("c", tokens=30_000))  # cut to 5,000; waits
        await anyio.sleep(0.01)
        d = alloc.demand("anthropic")
        assert (d.held_tokens, d.waiting_tokens, d.waiting) == (10_000, 30_000, 1)
        first = cap.demand_tokens_per_minute("anthropic")
        tg.cancel_scope.cancel()
    got, want = first, int(40_000 * 60 / UNKNOWN_HOLD_S)
    assert got == want


async def test_closed_pool_holds_requests_at_full_size_until_a_slice_arrives() -> None:
    """A slice of 0 closes the pool (tokens_per_minute=0): requests wait instead of going
    ahead cut to a tiny max share on credit; the next slice grants them in full."""
    cfg = VibeConfig(allocator=AllocatorConfig(pools={"anthropic": PoolConfig(
        tokens_per_minute=60_000, requests_per_minute=None, concurrent=None)}))

    alloc = Allocator(cfg.allocator)
    cap = PoolCapacity(alloc, cfg.model_copy(update={"distributed": cfg.distributed.model_copy(
        update={"global_pools": {"anthropic": GlobalPoolConfig(tokens_per_minute=60_000)}})}))
    assert cap.global_quota(SlicedMemoryStore(share=0)) is not None
    granted: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(alloc.run)
        alloc.register("a")

        async def ask() -> None:
            granted.append((await alloc.acquire("a", tokens=2_400)).tokens)

        tg.start_soon(ask)
        await anyio.sleep(30)
        assert granted == [] and alloc.demand().waiting_tokens == 2_400
        cap.on_slice("anthropic", 60_000)
        await anyio.sleep(3)  # the bucket refills at 1,000 tokens/s from empty
        assert granted == [2_400]
        tg.cancel_scope.cancel()


async def test_r5_3_status_json_shows_a_new_slice_within_an_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R5.3 across processes: a new quota slice is in ``status.json`` at the next status
    interval (or 4× a write's time when writes are slow), not after the 20× back-off of an
    ordinary change (the file showed a slice that had long changed)."""
    cfg = _config(tmp_path, distributed=GLOBAL,
                  observe={"status_interval_s": 0.5, "history": False})
    orch = _orch(cfg, SlicedMemoryStore(share=60_000), ScriptedProvider())
    writer = orch.observers.status
    assert writer is not None
    write = writer.write

    def slow_write(*, running: bool = True) -> Path:  # a huge run's status: 0.2 s a write
        path = write(running=running)
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        clock.jump(0.2)
        return path

    monkeypatch.setattr(writer, "write", slow_write)

    def shown() -> int:
        doc = json.loads(writer.path.read_text("utf-8"))
        return int(doc["pools"][0]["tokens_per_minute"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        await anyio.sleep(0.5)  # the first write (a closed pool), then a 4 s back-off
        assert shown() == CLOSED_TOKENS_PER_MINUTE and writer.writes == 1
        orch.capacity.on_slice("anthropic", 300_000)
        await anyio.sleep(1.5)  # shown 0.8 s (4 × 0.2 s) after the first write
        assert shown() == 300_000 and writer.writes == 2
        tg.cancel_scope.cancel()
