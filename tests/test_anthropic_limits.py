"""Limits learned from the real SDK's responses (fake API) reach the allocator, capped by a
global quota slice; retried attempts are counted once in model health (R6.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.builtin import QuestionAnswerAgent
from agents.fake_api import FakeAnthropicServer, Fault
from agents.providers import AnthropicProvider
from scheduler import TaskSpec, VibeConfig
from scheduler.config import ProviderConfig
from scheduler.runtime import Orchestrator
from scheduler.store import MemoryStore, Store
from scheduler.testing import build_orchestrator
from tests._anthropic_helpers import SECRET_KEY, fake_api
from tests._fakes import SlicedMemoryStore

# the fake Anthropic API is a real HTTP server: its sockets need real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
__all__ = ["fake_api"]


async def _no_wait(seconds: float) -> None:
    """Retry back-off without waiting for real time."""


def _orch(server: FakeAnthropicServer, tmp_path: Path, store: Store,
          **extra: Any) -> Orchestrator:
    config = VibeConfig.model_validate({
        "state_dir": tmp_path, "store": "memory", "session_id": "s1",
        "observe": {"status_interval_s": None, "history": False}, **extra,
    }).model_copy(update={"provider": ProviderConfig(kind="anthropic",
                                                     base_url=server.base_url)})
    provider = AnthropicProvider(config.provider, api_key=SECRET_KEY, sleep=_no_wait)
    return build_orchestrator({"qa": QuestionAnswerAgent}, config=config, provider=provider,
                              store=store)


def _pool(orch: Orchestrator) -> tuple[int | None, int | None]:
    p = orch.allocator.statistics().pools["anthropic"]
    return p.tokens_per_minute, p.requests_per_minute


async def test_headers_set_the_pool_capacity(fake_api: FakeAnthropicServer,
                                             tmp_path: Path) -> None:
    """The anthropic-ratelimit-* headers lower the configured per-minute capacities."""
    fake_api.configure(tokens_limit=90_000, requests_limit=60)
    orch = _orch(fake_api, tmp_path, MemoryStore())
    assert _pool(orch) == (400_000, 1_000)
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="How do leases expire?")])
    assert report.outcomes["q"].status == "completed"
    assert _pool(orch) == (90_000, 60)


async def test_r5_3_headers_never_raise_the_configured_caps(fake_api: FakeAnthropicServer,
                                                            tmp_path: Path) -> None:
    """R5.3: limits in the response headers may lower a configured pool capacity, never
    raise it: an account allowing 2M tokens and 4,000 requests a minute leaves a
    configured 50,000 / 100 as they are; a lower header still lowers the other one."""
    pools = {"pools": {"anthropic": {"tokens_per_minute": 50_000, "requests_per_minute": 100}}}
    for rpm_header, want in ((40, (50_000, 40)), (4_000, (50_000, 100))):
        fake_api.configure(tokens_limit=2_000_000, requests_limit=rpm_header)
        orch = _orch(fake_api, tmp_path, MemoryStore(), allocator=pools)
        report = await orch.run([TaskSpec(id="q", agent="qa", prompt="How do leases expire?")])
        assert report.outcomes["q"].status == "completed"
        assert _pool(orch) == want


async def test_global_slice_and_learned_limit_the_smaller_applies(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """With a global pool the allocator gets min(slice, learned limit); a learned limit
    below the global capacity also lowers the capacity the slices are cut from."""
    fake_api.configure(tokens_limit=90_000)
    store = SlicedMemoryStore(share=200_000)
    orch = _orch(fake_api, tmp_path, store, distributed={
        "global_pools": {"anthropic": {"tokens_per_minute": 1_000_000}},
        "orchestrator_id": "o1"})
    seen: list[tuple[int | None, int | None]] = []
    orch.gateway.on_settle.connect(lambda task, event: seen.append(_pool(orch)))
    report = await orch.run([TaskSpec(id=f"q{i}", agent="qa", prompt="Why?")
                             for i in range(2)])
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    assert seen and seen[-1][0] == 90_000  # min(200,000 slice, 90,000 learned)
    assert orch.quota is not None
    assert orch.quota.statistics().pools["anthropic"].capacity == 90_000
    store.share = 30_000
    orch.capacity.on_slice("anthropic", 30_000)
    assert _pool(orch)[0] == 30_000  # now the slice is the smaller


async def test_r6_3_a_retried_429_counts_once_in_health(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """The gateway records each call with its retries; the provider's per-attempt hook is
    not also wired to health, so a 429 retried to success is 1 call, 1 retry, 0 errors."""
    fake_api.inject(Fault("rate_limit", retry_after=0.01))
    orch = _orch(fake_api, tmp_path, MemoryStore())
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What?",
                                      params={"difficulty": 0.0})])
    assert report.outcomes["q"].status == "completed"
    model = orch.handles["q"].model
    stats = orch.gateway.health.statistics().models[model]
    assert (stats.calls, stats.retries, stats.errors) == (1, 1, 0)
