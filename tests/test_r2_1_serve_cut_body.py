"""R2.1 through ``vibe-engine serve``: a plain (not streamed) answer whose upstream body is
cut after the 200 status line and headers was made, and may have been billed, though
its usage never arrived.  The client gets an error; the key is charged the call's
estimate (``<event id>:estimate``) once -- not 0, and not twice.

Serve over real HTTP in front of the fake API (its ``drop_body`` fault), the real
anthropic SDK as the client.
"""

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
MAX_TOKENS = 64


async def test_r2_1_serve_charges_the_estimate_once_for_a_body_cut_after_200(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """Before, the key was charged 0 tokens for the cut answer the fake API billed (its
    input and 10 output tokens); now its estimate: the prompt's and all 64 output tokens
    it could have made, once; the next call is charged what it reported, on top."""
    fake_api.configure(output_tokens=10)
    async with (serving(serve_config(tmp_path, fake_api.base_url, KEYS)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        fake_api.inject(Fault("drop_body"))
        with pytest.raises(anthropic.APIStatusError):
            await aio.messages.create(model="claude-haiku-4-5", max_tokens=MAX_TOKENS,
                                      messages=USER)  # type: ignore[arg-type]
        (billed,) = fake_api.reported
        assert not billed.complete
        cut = (await run.settled("alpha", 1)).tokens  # (the totals go on counting)
        orch = run.served.orchestrator
        (event,) = await orch.store.events()
        assert event.event_id.endswith(":estimate")
        assert event.usage.completion_tokens == MAX_TOKENS
        assert cut == event.usage.total_tokens >= billed.input_tokens + 10
        warned = [e for e in orch.bus.history if e.name == "usage_estimated"]
        assert len(warned) == 1 and "cut off" in warned[0].message
        # the next answer comes whole: charged as reported, the estimate still once
        await aio.messages.create(model="claude-haiku-4-5", max_tokens=MAX_TOKENS,
                                  messages=USER)  # type: ignore[arg-type]
        after = await run.settled("alpha", 2)
        events = await orch.store.events()
        assert [e.event_id.endswith(":estimate") for e in events] == [True, False]
        whole = fake_api.reported[1]
        assert after.tokens == cut + whole.input_tokens + whole.output_tokens


async def test_r2_1_serve_charges_the_estimate_for_a_stream_dropped_mid_output(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """A streamed answer whose upstream connection drops after 20 deltas: the fake API
    billed its input and the output it sent; the key was charged message_start's usage
    alone (1 output token), now its input as counted and all the output it could make."""
    fake_api.configure(output_tokens=40)
    async with (serving(serve_config(tmp_path, fake_api.base_url, KEYS)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        fake_api.inject(Fault("drop_stream", after_events=3 + 20))
        with pytest.raises(anthropic.APIError):
            async with aio.messages.stream(model="claude-haiku-4-5", max_tokens=MAX_TOKENS,
                                           messages=USER) as s:  # type: ignore[arg-type]
                await s.get_final_message()
        (billed,) = fake_api.reported
        assert not billed.complete and billed.output_tokens >= 20
        charged = (await run.settled("alpha", 1)).tokens
        (event,) = await run.served.orchestrator.store.events()
        assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (
            billed.input_tokens, MAX_TOKENS)
        assert charged == event.usage.total_tokens >= billed.input_tokens + billed.output_tokens
