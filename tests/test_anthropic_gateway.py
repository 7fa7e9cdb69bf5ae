"""The gateway with the real provider: pre-call counting through the API (R2.2, R2.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import structlog

from agents.builtin import QuestionAnswerAgent
from agents.fake_api import FakeAnthropicServer
from agents.providers import AnthropicProvider
from scheduler import TaskSpec, VibeConfig
from scheduler.budget import TokenCounter
from scheduler.config import ProviderConfig
from scheduler.core import FixedWallClock
from scheduler.runtime import Orchestrator
from scheduler.testing import FRIDAY
from tests._anthropic_helpers import SECRET_KEY, fake_api

# the fake Anthropic API is a real HTTP server: its sockets need real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
__all__ = ["fake_api"]


async def _run(server: FakeAnthropicServer, tmp_path: Path,
               mode: Literal["tiktoken", "api"]) -> list[str]:
    config = VibeConfig(state_dir=tmp_path, store="memory", session_id="s1",
                        provider=ProviderConfig(kind="anthropic", base_url=server.base_url,
                                                count_tokens=mode))
    orch = Orchestrator(config, provider=AnthropicProvider(config.provider, api_key=SECRET_KEY),
                        agents={"qa": QuestionAnswerAgent}, wall=FixedWallClock(FRIDAY),
                        counter=TokenCounter())
    with structlog.testing.capture_logs() as logs:
        report = await orch.run([TaskSpec(id="q1", agent="qa",
                                          prompt="How do leases expire? " * 20)])
    assert report.outcomes["q1"].status == "completed"
    return [e["event"] for e in logs]


async def test_r2_2_api_counting_replaces_the_tiktoken_estimate(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R2.2: with count_tokens = "api" the gateway asks messages.count_tokens first, so the
    estimate equals the provider's count and R2.3 logs no discrepancy; with tiktoken the
    server's 1.8× count is a > 10 % discrepancy that is logged (the first call holds 1.5×
    tiktoken's count, the uncalibrated factor)."""
    fake_api.configure(input_ratio=1.8)
    events = await _run(fake_api, tmp_path / "api", "api")
    assert fake_api.state.count_requests == 1
    assert "token_estimate_discrepancy" not in events
    events = await _run(fake_api, tmp_path / "tik", "tiktoken")
    assert fake_api.state.count_requests == 1
    assert "token_estimate_discrepancy" in events
