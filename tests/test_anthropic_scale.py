"""100 concurrent agents through the real provider against the fake API (R2.1, R7.1).

The provider-level test sums the usage the provider returned; the orchestrator
test goes the one path of every model call (gateway → tracker → store) and
compares what the store charged with what the server reported.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agents import AgentContext
from agents.fake_api import FakeAnthropicServer, Fault
from scheduler import TaskSpec, Usage, VibeConfig
from scheduler.config import ProviderConfig
from scheduler.core import FixedWallClock
from scheduler.runtime import Orchestrator
from scheduler.testing import FRIDAY
from tests._anthropic_helpers import (
    SECRET_KEY,
    Recorder,
    fake_api,
    provider_for,
    reported_sum,
    request,
)

# the fake Anthropic API is a real HTTP server: its sockets need real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
__all__ = ["fake_api"]

LONG_SYSTEM = "Follow the repository conventions and keep diffs small. " * 90


def _inject_mixed_faults(server: FakeAnthropicServer) -> None:
    server.inject(Fault("rate_limit", retry_after=0.01), times=5)
    server.inject(Fault("overloaded"), times=3)
    server.inject(Fault("drop_stream", after_events=2), times=3)
    server.inject(Fault("server_error"), times=2)


async def test_r2_1_hundred_agents_provider_usage_equals_server_reports(
    fake_api: FakeAnthropicServer,
) -> None:
    """R2.1: 100 concurrent agents × 3 calls (plain and streamed, cached and not, with
    429/529/500/dropped streams on the way): summed provider usage = server reports."""
    _inject_mixed_faults(fake_api)
    rec = Recorder()
    provider = provider_for(fake_api, rec, max_retries=4)
    totals: list[Usage] = []

    async def agent(i: int) -> None:
        for step in range(3):
            c = await provider.complete(request(
                f"agent {i} step {step}: review the patch", stream=(i + step) % 2 == 0,
                system=LONG_SYSTEM if i % 4 == 0 else "Be brief.",
            ))
            totals.append(c.usage)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(agent, i)
    finally:
        await provider.aclose()
    total = Usage()
    for u in totals:
        total += u
    assert len(totals) == 300
    assert total == reported_sum(fake_api)
    assert total.cache_read_tokens > 0 and total.cache_write_5m_tokens > 0
    assert sorted(k for k in rec.kinds if k) == sorted(
        ["rate_limited"] * 5 + ["overloaded"] * 3 + ["connection"] * 3 + ["server_error"] * 2
    )


class _ReviewAgent:
    """Two governed calls per task: one streamed with a cacheable system prompt, one plain."""

    async def run(self, ctx: AgentContext) -> str:
        first = await ctx.llm.complete(
            [{"role": "user", "content": f"Review {ctx.task.prompt}"}],
            system=LONG_SYSTEM, max_tokens=200, stream=True,
        )
        second = await ctx.llm.complete(
            [{"role": "user", "content": f"Summarise the review of {ctx.task.prompt}"}],
            max_tokens=100,
        )
        return first.text + second.text


async def test_r2_1_hundred_agents_store_total_equals_server_reports(
    fake_api: FakeAnthropicServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R2.1: 100 agents through the gateway with the real provider (kind="anthropic"):
    what the store charged equals, field by field, the sum the server reported."""
    from agents import make_provider

    monkeypatch.setenv("VIBE_TEST_ANTHROPIC_KEY", SECRET_KEY)
    _inject_mixed_faults(fake_api)
    config = VibeConfig(
        state_dir=tmp_path, store="sqlite", session_id="s1",
        provider=ProviderConfig(kind="anthropic", base_url=fake_api.base_url,
                                api_key_env="VIBE_TEST_ANTHROPIC_KEY", max_retries=4,
                                retry_backoff_s=0.0),
    )
    orch = Orchestrator(config, provider=make_provider(config), agents={"review": _ReviewAgent},
                        wall=FixedWallClock(FRIDAY))
    specs = [TaskSpec(id=f"r{i}", agent="review", prompt=f"patch {i} of the parser")
             for i in range(100)]
    report = await orch.run(specs)
    assert all(o.status == "completed" for o in report.outcomes.values()), [
        o.reason for o in report.outcomes.values() if o.status != "completed"
    ]
    server = reported_sum(fake_api)
    total = report.total
    assert total.calls == 200
    assert total.prompt_tokens == server.prompt_tokens
    assert total.completion_tokens == server.completion_tokens
    assert total.cache_read_tokens == server.cache_read_tokens > 0
    assert total.cache_write_tokens == server.cache_write_tokens > 0
    assert total.tokens == server.total_tokens


class _OneStreamAgent:
    async def run(self, ctx: AgentContext) -> str:
        reply = await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}],
                                       max_tokens=100, stream=True)
        return reply.text


async def test_r2_1_failed_call_that_consumed_tokens_is_charged(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R2.1: a stream dropped after message_start on every attempt fails the task, and
    the input the provider consumed is still charged to it."""
    fake_api.inject(Fault("drop_stream", after_events=2), times=2)
    config = VibeConfig(state_dir=tmp_path, store="memory", session_id="s1",
                        provider=ProviderConfig(kind="anthropic", base_url=fake_api.base_url,
                                                max_retries=1, retry_backoff_s=0.0))
    from agents.providers import AnthropicProvider

    provider = AnthropicProvider(config.provider, api_key=SECRET_KEY)
    orch = Orchestrator(config, provider=provider, agents={"one": _OneStreamAgent},
                        wall=FixedWallClock(FRIDAY))
    report = await orch.run([TaskSpec(id="d1", agent="one", prompt="stream this")])
    assert report.outcomes["d1"].status == "failed"
    server = reported_sum(fake_api)
    assert len(fake_api.reported) == 2 and server.prompt_tokens > 0
    usage = report.outcomes["d1"].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        server.prompt_tokens, server.completion_tokens)
