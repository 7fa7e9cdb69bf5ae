"""Shared set-up for the tests that drive the real anthropic SDK against the fake API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agents.fake_api import FakeAnthropicServer, Reported, open_fake_api
from agents.providers import AnthropicProvider
from scheduler import CompletionRequest, Usage
from scheduler.config import ProviderConfig
from scheduler.core import RateLimitInfo

#: A key that must never show up in logs, reprs or error messages.
SECRET_KEY = "sk-ant-api03-TESTSECRET-5f2b9c1e7d"


@dataclass
class Recorder:
    """Collects what the provider reports through its hooks, and the waits it asks for."""

    attempts: list[tuple[str, bool, str | None]] = field(default_factory=list)
    limits: list[tuple[str, RateLimitInfo]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    def on_attempt(self, model: str, ok: bool, latency_s: float, kind: str | None) -> None:
        assert latency_s >= 0
        self.attempts.append((model, ok, kind))

    def on_rate_limits(self, pool: str, info: RateLimitInfo) -> None:
        self.limits.append((pool, info))

    async def sleep(self, seconds: float) -> None:
        """Records the wait instead of sleeping (tests never wait for real time)."""
        self.sleeps.append(seconds)

    @property
    def kinds(self) -> list[str | None]:
        return [k for _, _, k in self.attempts]


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropicServer]:
    with open_fake_api(api_key=SECRET_KEY) as server:
        yield server


def provider_for(server: FakeAnthropicServer, rec: Recorder | None = None,
                 **config: Any) -> AnthropicProvider:
    cfg = ProviderConfig(kind="anthropic", base_url=server.base_url, **config)
    rec = rec or Recorder()
    return AnthropicProvider(cfg, api_key=SECRET_KEY, on_attempt=rec.on_attempt,
                             on_rate_limits=rec.on_rate_limits, sleep=rec.sleep)


def request(text: str = "Explain the retry loop.", *, model: str = "sonnet",
            stream: bool = False, system: str = "", max_tokens: int = 256,
            **hints: Any) -> CompletionRequest:
    return CompletionRequest(
        model=model, model_id="claude-sonnet-4-6" if model == "sonnet" else "claude-haiku-4-5",
        messages=[{"role": "user", "content": text}], system=system, max_tokens=max_tokens,
        stream=stream, task_id="t1", hints=hints,
    )


def as_usage(r: Reported) -> Usage:
    return Usage(r.input_tokens, r.output_tokens, r.cache_read_input_tokens,
                 r.cache_creation_5m, r.cache_creation_1h)


def reported_sum(server: FakeAnthropicServer) -> Usage:
    total = Usage()
    for r in server.reported:
        total += as_usage(r)
    return total
