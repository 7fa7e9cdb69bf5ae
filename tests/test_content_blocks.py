"""Content blocks end to end: the real SDK over real HTTP against the fake API (R2.1).

Answers keep every block (text, tool_use, thinking, redacted thinking, types
the runtime does not know), their ``stop_reason`` and message id; a streamed
answer is assembled exactly as the SDK's own ``MessageStream`` assembles it;
messages sent may hold any blocks; request options pass through.
"""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import pytest

from agents.fake_api import FakeAnthropicServer, load_script
from scheduler import CompletionRequest, ConfigError, ProviderError
from scheduler.budget import IMAGE_TOKENS, TokenCounter
from tests._anthropic_helpers import SECRET_KEY, fake_api, provider_for

# the fake Anthropic API is a real HTTP server: its sockets need real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
__all__ = ["fake_api"]

TOOL_TURN: dict[str, Any] = {
    "id": "msg_tool_turn_1",
    "content": [
        {"type": "thinking", "thinking": "The test fails; read calc.py first.",
         "signature": "sig-abc123"},
        {"type": "redacted_thinking", "data": "EuYBCkQYAiJA"},
        {"type": "text", "text": "Let me look at the file."},
        {"type": "tool_use", "id": "toolu_01", "name": "read_file",
         "input": {"path": "calc.py", "range": [1, 40], "opts": {"strip": True}}},
        {"type": "future_block", "payload": {"kept": [1, 2, 3]}},
    ],
    "stop_reason": "tool_use",
}
TOOLS = [{"name": "read_file", "description": "Read a file.",
          "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}]


def _request(stream: bool, **kw: Any) -> CompletionRequest:
    return CompletionRequest(
        model="sonnet", model_id="claude-sonnet-4-6", stream=stream, task_id="t1",
        messages=[{"role": "user", "content": "fix the failing test"}], tools=TOOLS,
        max_tokens=512, **kw,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_r2_1_completion_keeps_every_block_stop_reason_and_id(
    fake_api: FakeAnthropicServer, stream: bool
) -> None:
    """Every block comes back intact (an unknown type too), with stop_reason and id."""
    fake_api.load_script([TOOL_TURN])
    provider = provider_for(fake_api)
    try:
        c = await provider.complete(_request(stream))
    finally:
        await provider.aclose()
    assert [dict(b) for b in c.content] == TOOL_TURN["content"]
    assert c.stop_reason == "tool_use" and c.id == "msg_tool_turn_1"
    assert c.text == "Let me look at the file."
    assert c.tool_uses == [TOOL_TURN["content"][3]]
    assert c.message() == {"role": "assistant", "content": TOOL_TURN["content"]}


async def test_r2_1_stream_assembled_exactly_as_the_sdk_message_stream(
    fake_api: FakeAnthropicServer,
) -> None:
    """The same scripted body, streamed twice: once through the provider, once through
    the SDK's own ``messages.stream`` helper; the blocks are equal, field for field."""
    known = {**TOOL_TURN, "content": TOOL_TURN["content"][:4]}
    fake_api.load_script([known, known])
    texts: list[str] = []
    provider = provider_for(fake_api)
    try:
        ours = await provider.complete(_request(True, on_text=texts.append))
    finally:
        await provider.aclose()
    client = anthropic.AsyncAnthropic(api_key=SECRET_KEY, base_url=fake_api.base_url)
    try:
        async with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=512, tools=TOOLS,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "fix the failing test"}],
        ) as stream:
            final = await stream.get_final_message()
    finally:
        await client.close()
    assert [dict(b) for b in ours.content] == [b.to_dict() for b in final.content]
    assert ours.stop_reason == final.stop_reason == "tool_use"
    assert ours.id == final.id
    assert len(texts) > 1 and "".join(texts) == "Let me look at the file."


async def test_messages_with_any_blocks_and_options_reach_the_api_as_sent(
    fake_api: FakeAnthropicServer,
) -> None:
    """tool_result (text and image), documents, cache_control and options pass through."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(b"\x89PNG....").decode()}}
    messages = [
        {"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "spec text"},
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "fix it"}]},
        TOOL_TURN | {"role": "assistant", "content": TOOL_TURN["content"][:4]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01",
             "content": [{"type": "text", "text": "def add(a, b): ..."}, image]}]},
    ]
    messages[1] = {"role": "assistant", "content": TOOL_TURN["content"][:4]}
    options = {"temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"],
               "tool_choice": {"type": "auto"}, "metadata": {"user_id": "u-1"},
               "service_tier": "standard_only", "extra": {"future_field": 7}}
    provider = provider_for(fake_api)
    try:
        await provider.complete(CompletionRequest(
            model="sonnet", model_id="claude-sonnet-4-6", messages=messages, tools=TOOLS,
            task_id="t1", options=options))
    finally:
        await provider.aclose()
    sent = fake_api.last_request
    assert sent is not None and sent["messages"] == messages
    for key in ("temperature", "top_p", "stop_sequences", "tool_choice", "metadata",
                "service_tier"):
        assert sent[key] == options[key]
    assert sent["future_field"] == 7


async def test_unknown_request_option_is_an_error_not_dropped(
    make_orchestrator: Any,
) -> None:
    """A misspelt option raises ConfigError naming it, instead of changing nothing."""
    seen: list[BaseException] = []

    class Agent:
        async def run(self, ctx: Any) -> str:
            try:
                await ctx.llm.complete([{"role": "user", "content": "hi"}],
                                       options={"temprature": 0.1})
            except ConfigError as exc:
                seen.append(exc)
            return "done"

    orch = make_orchestrator({"a": Agent}, tasks=[{"id": "t", "agent": "a", "prompt": "x"}])
    await orch.run()
    assert len(seen) == 1 and "temprature" in str(seen[0])


async def test_unknown_model_id_gets_the_real_404(fake_api: FakeAnthropicServer) -> None:
    """An id the API does not serve: 404 not_found_error, a client error never retried."""
    provider = provider_for(fake_api)
    try:
        with pytest.raises(ProviderError) as info:
            await provider.complete(CompletionRequest(
                model="sonnet", model_id="claude-sonnet-9-9",
                messages=[{"role": "user", "content": "hi"}]))
    finally:
        await provider.aclose()
    assert info.value.status == 404 and "not_found_error" in str(info.value)
    assert isinstance(info.value.__cause__, anthropic.NotFoundError)
    assert fake_api.requests == 1


async def test_models_list_and_query_string_paths(fake_api: FakeAnthropicServer) -> None:
    """GET /v1/models through the SDK; the beta client's ``/v1/messages?beta=true``."""
    client = anthropic.AsyncAnthropic(api_key=SECRET_KEY, base_url=fake_api.base_url)
    try:
        ids = [m.id async for m in client.models.list()]
        one = await client.models.retrieve("claude-haiku-4-5")
        reply = await client.beta.messages.create(
            model="claude-haiku-4-5", max_tokens=20,
            messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert {"claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5"} <= set(ids)
    assert one.id == "claude-haiku-4-5"
    assert reply.content and reply.usage.input_tokens > 0


def test_script_file_lines_and_errors(tmp_path: Any) -> None:
    good = tmp_path / "s.jsonl"
    good.write_text('{"content": [{"type": "text", "text": "a"}]}\n\n'
                    '{"content": [], "stop_reason": "end_turn"}\n')
    assert len(load_script(good)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": []}\n{"no": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_script(bad)


def test_r2_2_estimate_counts_every_block_kind() -> None:
    """R2.2: tool_use input, tool_result content, thinking, documents and images count;
    an image costs what the API charges, not its base64 length; cache_control is free."""
    c = TokenCounter()
    big_png = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                           "data": "A" * 400_000}}
    assert c.count_block(big_png) == IMAGE_TOKENS
    text = {"type": "text", "text": "hello world " * 50}
    cached = {**text, "cache_control": {"type": "ephemeral"}}
    assert c.count_block(cached) == c.count_block(text) > 0
    use = {"type": "tool_use", "id": "t", "name": "edit_file",
           "input": {"path": "a.py", "new": "x = 1\n" * 100}}
    assert c.count_block(use) > 100
    result = {"type": "tool_result", "tool_use_id": "t",
              "content": [{"type": "text", "text": "ok " * 200}, big_png]}
    assert c.count_block(result) > IMAGE_TOKENS + 150
    thinking = {"type": "thinking", "thinking": "step by step " * 30, "signature": "s"}
    assert c.count_block(thinking) >= 60
    pdf = base64.b64encode(b"%PDF /Type /Pages /Type /Page x /Type/Page y").decode()
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": pdf}}
    assert c.count_block(doc) == 2 * 3_000
    msgs = [{"role": "user", "content": [result]}]
    assert c.count_prompt(msgs) > IMAGE_TOKENS


async def test_thinking_budget_is_part_of_the_reservation(make_orchestrator: Any) -> None:
    """A thinking budget above max_tokens (interleaved thinking) is reserved in full."""
    from scheduler.testing import ScriptedProvider

    class Watching(ScriptedProvider):
        reserved: list[int] = []

        async def complete(self, request: CompletionRequest) -> Any:
            task_scope = orch.tracker.scopes(request.task_id)[0]
            self.reserved.append(sum(task_scope.reserved_by_model.values()))
            return await super().complete(request)

    class Agent:
        async def run(self, ctx: Any) -> str:
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=1_000,
                                   options={"thinking": {"type": "enabled",
                                                         "budget_tokens": 6_000}})
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=1_000)
            return "done"

    provider = Watching()
    orch = make_orchestrator({"a": Agent}, provider=provider,
                             tasks=[{"id": "t", "agent": "a", "prompt": "x"}])
    await orch.run()
    with_thinking, without = provider.reserved
    assert with_thinking >= 6_000 > 1_000 <= without < 6_000
