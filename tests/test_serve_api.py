"""``vibe-engine serve`` with the official anthropic SDK (sync and async) against the fake
API upstream (#21): plain, streamed, tool use over several turns, count_tokens, models;
usage charged to each key equals what the upstream reported (R2.1, R2.4)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from agents.fake_api import FakeAnthropicServer
from scheduler.core import Totals
from tests._anthropic_helpers import SECRET_KEY, fake_api, reported_sum
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

pytestmark = pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, the fake API

KEY_A = CLIENT_KEYS["VIBE_KEY_A"]
KEY_B = CLIENT_KEYS["VIBE_KEY_B"]
USER = [{"role": "user", "content": "Explain the retry loop in two lines."}]


def _keys(**a: Any) -> list[dict[str, Any]]:
    return [{"name": "alpha", "key_env": "VIBE_KEY_A", **a},
            {"name": "beta", "key_env": "VIBE_KEY_B", "allowed_models": ["claude-haiku-4-5"]}]


async def _client(stack: AsyncExitStack, url: str, **kw: Any) -> anthropic.AsyncAnthropic:
    """An async SDK client closed with ``stack`` (no socket outlives the test's loop)."""
    return await stack.enter_async_context(anthropic.AsyncAnthropic(base_url=url, **kw))


def _charged(t: Totals) -> tuple[int, int, int, int]:
    return (t.prompt_tokens, t.completion_tokens, t.cache_read_tokens, t.cache_write_tokens)


async def test_21_sync_and_async_sdk_plain_streamed_counted_listed(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21: both SDK clients, plain and streamed, through serve; the key's charged usage
    equals what the upstream reported, cache tokens included (R2.4); count_tokens and
    models answer; the upstream saw the server's key, never the client's."""
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                AsyncExitStack() as stack):
        sync = anthropic.Anthropic(base_url=run.url, api_key=KEY_A, max_retries=0)
        stack.callback(sync.close)
        aio = await _client(stack, run.url, api_key=KEY_A, max_retries=0)
        system = [{"type": "text", "text": "You are terse. " * 300,
                   "cache_control": {"type": "ephemeral"}}]

        def sync_calls() -> list[Any]:
            plain = sync.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                         messages=USER, system=system)  # type: ignore[arg-type]
            with sync.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                      messages=USER) as s:  # type: ignore[arg-type]
                text = "".join(s.text_stream)
                final = s.get_final_message()
            assert text == final.content[0].text  # type: ignore[union-attr]
            return [plain, final]

        plain, streamed = await anyio.to_thread.run_sync(sync_calls)
        assert plain.content[0].text and plain.usage.output_tokens > 0
        assert streamed.usage.output_tokens > 0
        a_plain = await aio.messages.create(model="claude-haiku-4-5", max_tokens=32,
                                            messages=USER)  # type: ignore[arg-type]
        async with aio.messages.stream(model="claude-haiku-4-5", max_tokens=32,
                                       messages=USER, system=system) as s:  # type: ignore[arg-type]
            a_stream = await s.get_final_message()
        assert a_plain.model == "claude-haiku-4-5" and a_stream.stop_reason == "end_turn"
        counted = await aio.messages.count_tokens(model="claude-sonnet-4-6",
                                                  messages=USER)  # type: ignore[arg-type]
        assert counted.input_tokens > 0
        models = [m.id async for m in aio.models.list()]
        assert models[0] == "vibe-auto" and "claude-sonnet-4-6" in models

        upstream = reported_sum(fake_api)
        assert len(fake_api.reported) == 4  # count_tokens is not a model call
        assert upstream.cache_read_tokens + upstream.cache_write_tokens > 0
        assert _charged(await run.settled("alpha", 4)) == (
            upstream.prompt_tokens, upstream.completion_tokens, upstream.cache_read_tokens,
            upstream.cache_write_tokens)
        assert run.totals("alpha").calls == 4 and run.totals("beta").calls == 0
        assert run.served.orchestrator.handles["alpha"].calls == 4


async def test_21_alias_is_routed_and_tool_use_passes_through_several_turns(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R4: ``vibe-auto`` is routed to the cheapest capable tier; tool_use and
    tool_result blocks and unknown body fields reach the upstream intact over three
    turns, streamed and not."""
    tool = {"name": "read_file", "description": "Read a file",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}
    fake_api.load_script([
        {"content": [{"type": "tool_use", "id": "toolu_1", "name": "read_file",
                      "input": {"path": "a.py"}}], "stop_reason": "tool_use"},
        {"content": [{"type": "tool_use", "id": "toolu_2", "name": "read_file",
                      "input": {"path": "b.py"}}], "stop_reason": "tool_use"},
        {"content": [{"type": "text", "text": "Both files are fine."}]},
    ])
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                AsyncExitStack() as stack):
        aio = await _client(stack, run.url, api_key=KEY_A, max_retries=0)
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Check a.py and b.py"}]
        for turn in range(3):
            kw: dict[str, Any] = {"model": "vibe-auto", "max_tokens": 200,
                                  "messages": messages, "tools": [tool],
                                  "extra_body": {"vibe_test_unknown": {"turn": turn}}}
            if turn == 1:
                async with aio.messages.stream(**kw) as s:
                    reply = await s.get_final_message()
            else:
                reply = await aio.messages.create(**kw)
            messages.append({"role": "assistant",
                             "content": [b.model_dump() for b in reply.content]})
            if reply.stop_reason == "tool_use":
                use = reply.content[0]
                messages.append({"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": use.id,  # type: ignore[union-attr]
                     "content": f"contents of {use.input['path']}"}]})  # type: ignore[union-attr]
        assert reply.content[0].text == "Both files are fine."  # type: ignore[union-attr]
        sent = fake_api.scripted_requests
        assert [b["model"] for b in sent] == ["claude-haiku-4-5"] * 3  # routed: cheapest
        assert [b["vibe_test_unknown"] for b in sent] == [{"turn": 0}, {"turn": 1}, {"turn": 2}]
        assert sent[2]["messages"][1]["content"][0]["id"] == "toolu_1"
        assert sent[2]["messages"][4]["content"][0]["tool_use_id"] == "toolu_2"
        assert (await run.settled("alpha", 3)).calls == 3


async def test_21_unknown_key_disallowed_and_unknown_models_get_api_errors(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21: an unknown key gets the API's 401 shape, a model the key may not use a 403
    permission_error, a model nobody serves a 404; none reaches the upstream."""
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                AsyncExitStack() as stack):
        bad = await _client(stack, run.url, api_key="sk-nobody", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as auth:
            await bad.messages.create(model="claude-haiku-4-5", max_tokens=8,
                                      messages=USER)  # type: ignore[arg-type]
        assert auth.value.body == {"type": "error", "error": {
            "type": "authentication_error", "message": "invalid x-api-key"}}
        beta = await _client(stack, run.url, api_key=KEY_B, max_retries=2)
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await beta.messages.create(model="claude-opus-4-7", max_tokens=8,
                                       messages=USER)  # type: ignore[arg-type]
        assert "claude-haiku-4-5" in str(denied.value)
        with pytest.raises(anthropic.NotFoundError):
            await beta.messages.create(model="claude-nothing-1", max_tokens=8,
                                       messages=USER)  # type: ignore[arg-type]
        bearer = await _client(stack, run.url, auth_token=KEY_B, max_retries=0)
        ok = await bearer.messages.create(model="claude-haiku-4-5", max_tokens=8,
                                          messages=USER)  # type: ignore[arg-type]
        assert ok.usage.output_tokens > 0
        assert fake_api.requests == 1 and SECRET_KEY not in str(auth.value)


async def test_r1_1_reject_at_the_key_budget_is_not_retried_and_names_the_budget(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R1.1/R1.2 through serve (#21): a ``reject`` key at its token budget gets a 400
    invalid_request_error the SDK does not retry, naming the budget and how to raise it."""
    keys = _keys(budget={"tokens": 400}, on_limit="reject")
    data = {**serve_config(tmp_path, fake_api.base_url, keys),
            "metrics": {"enabled": True, "port": 0}}
    async with (serving(data) as run,
                AsyncExitStack() as stack):
        logs = stack.enter_context(capture_logs())
        aio = await _client(stack, run.url, api_key=KEY_A, max_retries=3)
        await aio.messages.create(model="claude-haiku-4-5", max_tokens=64,
                                  messages=USER)  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError) as refused:
            await aio.messages.create(model="claude-haiku-4-5", max_tokens=1000,
                                      messages=USER)  # type: ignore[arg-type]
        message = str(refused.value)
        assert "task:alpha tokens" in message and "budget.tokens" in message
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert fake_api.requests == 1  # refused before the upstream; not retried
        assert run.served.requests["alpha"] == 2
        # a pause (the alert policy's at 100 %) never holds a reject key: what fits passes
        await run.served.orchestrator.controller.request_pause("alpha", "test")
        await aio.messages.create(model="claude-haiku-4-5", max_tokens=16,
                                  messages=USER)  # type: ignore[arg-type]
        assert run.totals("alpha").tokens <= 400
        metrics = run.served.orchestrator.observers.metrics
        assert metrics is not None
        text = generate_latest(metrics.registry).decode()  # per-key metrics (#21)
        assert 'vibe_serve_requests_total{key="alpha",outcome="refused"} 1.0' in text
        assert 'vibe_serve_requests_total{key="alpha",outcome="ok"} 2.0' in text
        # a client that got its refusal did not leave while waiting
        assert not [e for e in logs if e["event"] == "serve_client_left"]
        assert 'vibe_serve_tokens_total{key="alpha",kind="completion"}' in text


async def test_21_hostile_bodies_get_one_400_each_and_the_server_goes_on(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, bad input: a body that is not JSON, JSON nested 100,000 deep (the parser's
    recursion limit), not an object, or with a model that is not a string each get a
    400 invalid_request_error naming the problem; none reaches the upstream, and the
    next good call is served."""
    import httpx2

    deep = b'{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": ' + \
        b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = {
        b"{bad": "not a JSON object",
        deep: "nested too deeply",
        b"[1, 2]": "not a JSON object",
        b'{"model": 5, "max_tokens": 5, "messages": []}': "model: Input should be a valid",
    }
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                httpx2.AsyncClient(base_url=run.url) as http):
        for body, problem in cases.items():
            answer = await http.post("/v1/messages", content=body,
                                     headers={"x-api-key": KEY_A})
            assert answer.status_code == 400, (body[:20], answer.text)
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error" and problem in error["message"]
        ok = await http.post("/v1/messages", headers={"x-api-key": KEY_A}, json={
            "model": "claude-haiku-4-5", "max_tokens": 8, "messages": USER})
        assert ok.status_code == 200 and fake_api.requests == 1


async def test_21_a_body_over_the_limit_gets_413_unread_and_the_server_goes_on(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, bad input: a body over ``serve.max_request_bytes`` gets the API's 413
    ``request_too_large`` naming the limit, whether its size is declared up front or it
    arrives in chunks with no length; it never reaches the upstream, and the next good
    call is served."""
    import httpx2

    big = b'{"model": "claude-haiku-4-5", "max_tokens": 5, "pad": "' + b"x" * 20_000 + b'"}'

    async def chunks() -> Any:
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    config = serve_config(tmp_path, fake_api.base_url, _keys(), max_request_bytes=8_000)
    async with serving(config) as run, httpx2.AsyncClient(base_url=run.url) as http:
        for content in (big, chunks()):
            answer = await http.post("/v1/messages", content=content,
                                     headers={"x-api-key": KEY_A})
            assert answer.status_code == 413, answer.text
            error = answer.json()["error"]
            assert error["type"] == "request_too_large" and "8,000 bytes" in error["message"]
            assert answer.headers["x-should-retry"] == "false"
        ok = await http.post("/v1/messages", headers={"x-api-key": KEY_A}, json={
            "model": "claude-haiku-4-5", "max_tokens": 8, "messages": USER})
        assert ok.status_code == 200 and fake_api.requests == 1
