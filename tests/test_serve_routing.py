"""Degradation through serve (R6.1, #21): a 529 on a routed (``vibe-auto``) request falls
back to the next usable model; on an explicit model id the upstream's 529 reaches the
client as the API sent it; a stream the upstream breaks off still settles what it used."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anthropic
import pytest

from agents.fake_api import FakeAnthropicServer, Fault
from tests._anthropic_helpers import fake_api
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

pytestmark = pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, the fake API

USER = [{"role": "user", "content": "One word, please."}]
KEYS = [{"name": "alpha", "key_env": "VIBE_KEY_A"}]


async def test_r6_1_routed_request_falls_back_explicit_gets_the_upstream_529(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R6.1 (#21): the alias's 529 moves the call to the next model and the client gets
    that answer; an explicit id's 529 is relayed with its status and error type."""
    async with (serving(serve_config(tmp_path, fake_api.base_url, KEYS)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        fake_api.inject(Fault("overloaded", model="claude-haiku-4-5"))
        routed = await aio.messages.create(model="vibe-auto", max_tokens=16,
                                           messages=USER)  # type: ignore[arg-type]
        assert routed.model != "claude-haiku-4-5"
        fake_api.inject(Fault("overloaded", model="claude-haiku-4-5"))
        with pytest.raises(anthropic.APIStatusError) as failed:
            await aio.messages.create(model="claude-haiku-4-5", max_tokens=16,
                                      messages=USER)  # type: ignore[arg-type]
        assert failed.value.status_code == 529
        assert failed.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        assert run.totals("alpha").calls == 1  # the failed attempts cost nothing


async def test_r2_1_a_stream_broken_off_upstream_settles_what_it_used(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R2.1 (#21): an upstream ``error`` event mid-stream reaches the client as that event,
    and the key is charged the usage the stream reported before it."""
    async with (serving(serve_config(tmp_path, fake_api.base_url, KEYS)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        fake_api.inject(Fault("stream_error", after_events=3))
        with pytest.raises(anthropic.APIStatusError):
            async with aio.messages.stream(model="claude-haiku-4-5", max_tokens=16,
                                           messages=USER) as s:  # type: ignore[arg-type]
                await s.get_final_message()
        reported = fake_api.reported
        assert len(reported) == 1
        charged = await run.settled("alpha", 1)
        assert charged.prompt_tokens == reported[0].input_tokens
        assert charged.calls == 1


async def test_r3_2_a_key_past_70_percent_gets_routed_one_tier_down(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R3.2 through serve (#21): once a key's spend crosses the 70 % warning, its routed
    requests go one tier down, as an in-process task's do; explicit ids are unchanged."""
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "task_type": "bug_fix",
             "complexity": "moderate", "budget": {"tokens": 1200}}]
    async with (serving(serve_config(tmp_path, fake_api.base_url, keys)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        fake_api.configure(output_tokens=880)
        first = await aio.messages.create(model="vibe-auto", max_tokens=900,
                                          messages=USER)  # type: ignore[arg-type]
        assert first.model == "claude-sonnet-4-6"  # a moderate bug fix: sonnet
        assert 0.7 < (await run.settled("alpha", 1)).tokens / 1200 < 0.9
        fake_api.configure(output_tokens=10)
        second = await aio.messages.create(model="vibe-auto", max_tokens=20,
                                           messages=USER)  # type: ignore[arg-type]
        assert second.model == "claude-haiku-4-5"
        explicit = await aio.messages.create(model="claude-sonnet-4-6", max_tokens=20,
                                             messages=USER)  # type: ignore[arg-type]
        assert explicit.model == "claude-sonnet-4-6"


async def test_r4_2_a_catalog_name_reaches_the_upstream_as_its_model_id(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R4.2 through serve (#21, docs/guide-govern-existing-agent.md): an explicit key may
    name a model by its catalog name (``sonnet``); the upstream, which knows provider ids
    only, is sent ``claude-sonnet-4-6``, for a call and for count_tokens alike."""
    async with (serving(serve_config(tmp_path, fake_api.base_url, KEYS)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        named = await aio.messages.create(model="sonnet", max_tokens=16,
                                          messages=USER)  # type: ignore[arg-type]
        assert named.model == "claude-sonnet-4-6"
        counted = await aio.messages.count_tokens(model="sonnet",
                                                  messages=USER)  # type: ignore[arg-type]
        assert counted.input_tokens > 0
        assert (await run.settled("alpha", 1)).tokens_by_model.keys() == {"sonnet"}
