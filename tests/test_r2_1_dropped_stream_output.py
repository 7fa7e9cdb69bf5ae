"""R2.1: a streamed answer dropped after part of its output was streamed was billed for
that output, though the ``message_delta`` that would have counted it never came.  It is
charged its input and at least the output tokens that streamed, not ``message_start``'s
usage alone (1 output token).

Through ``Orchestrator.run``, the real anthropic SDK over real HTTP against the fake API,
whose ``drop_stream`` fault closes the connection after some ``content_block_delta``s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.fake_api import FakeAnthropicServer, Fault
from agents.providers import AnthropicProvider
from scheduler import AgentContext, TaskSpec, VibeConfig
from scheduler.config import ProviderConfig
from scheduler.core import FixedWallClock
from scheduler.runtime import Orchestrator
from scheduler.testing import FRIDAY
from tests._anthropic_helpers import SECRET_KEY, fake_api

# the fake Anthropic API is a real HTTP server: its sockets need real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
__all__ = ["fake_api"]

#: ``message_start``, ``content_block_start`` and ``ping`` come before the first delta.
BEFORE_DELTAS = 3


class StreamingAgent:
    """One streamed call on sonnet, its text collected as it arrives."""

    seen: list[str] = []

    async def run(self, ctx: AgentContext) -> str:
        reply = await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}],
                                       max_tokens=400, model="sonnet", stream=True,
                                       on_text=self.seen.append)
        return reply.text


@pytest.mark.parametrize("deltas", [0, 25])
async def test_r2_1_a_stream_dropped_mid_output_is_charged_the_output_it_streamed(
    fake_api: FakeAnthropicServer, tmp_path: Path, deltas: int,
) -> None:
    """Before, 25 streamed deltas (28 output tokens billed) were charged 1 output token;
    now the task is charged what the fake API billed: its input and the 28."""
    fake_api.inject(Fault("drop_stream", after_events=BEFORE_DELTAS + deltas))
    StreamingAgent.seen = []
    config = VibeConfig(state_dir=tmp_path, store="memory", session_id="s1",
                        provider=ProviderConfig(kind="anthropic", base_url=fake_api.base_url,
                                                max_retries=0))
    orch = Orchestrator(config, provider=AnthropicProvider(config.provider, api_key=SECRET_KEY),
                        agents={"stream": StreamingAgent}, wall=FixedWallClock(FRIDAY))
    report = await orch.run([TaskSpec(id="s", agent="stream", prompt="Tell me a story.")])
    assert report.outcomes["s"].status == "failed"
    assert len(StreamingAgent.seen) == deltas  # the output did stream before the cut
    (billed,) = fake_api.reported
    assert not billed.complete and billed.output_tokens >= max(deltas, 1)  # its text, counted
    events = [e for e in await orch.store.events() if e.task_id == "s"]
    assert len(events) == 1 and not events[0].event_id.endswith(":estimate")
    charged = events[0].usage
    assert (charged.prompt_tokens, charged.completion_tokens) == (
        billed.input_tokens, billed.output_tokens)
    assert report.outcomes["s"].usage.tokens == billed.input_tokens + billed.output_tokens
