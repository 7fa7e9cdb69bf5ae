"""Hostile input to ``vibe-engine serve`` over real HTTP (#21): each bad request gets one
Anthropic-shaped error with the right status, and leaves no lease, reservation or
charge behind; the next good call is served and charged what the upstream reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest

from agents.fake_api import FakeAnthropicServer, Fault
from tests._anthropic_helpers import fake_api, reported_sum
from tests._serve_helpers import CLIENT_KEYS, Running, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

pytestmark = pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, the fake API

KEY = CLIENT_KEYS["VIBE_KEY_A"]
HAIKU = "claude-haiku-4-5"


def _keys() -> list[dict[str, Any]]:
    return [{"name": "alpha", "key_env": "VIBE_KEY_A"}]


def _nothing_held(run: Running) -> None:
    """No lease, no reservation: every refused request gave back what it took."""
    assert run.served.orchestrator.allocator.statistics().leases == 0
    scope = run.served.orchestrator.tracker.task_scope("alpha")
    assert (scope.reserved_tokens, scope.reserved_cost) == (0, 0.0)


@pytest.mark.parametrize("content", [5, True, 1.5, {"type": "text", "text": "hi"}])
async def test_21_r2_1_a_message_content_of_the_wrong_type_gets_a_400_naming_it(
    fake_api: FakeAnthropicServer, tmp_path: Path, content: Any
) -> None:
    """#21, R2.1: a message whose content is neither text nor a list of blocks gets a
    400 ``invalid_request_error`` naming ``messages[1].content`` (it was a 500 from a
    ``TypeError`` in the token count); nothing reaches the upstream or is charged, and
    the same client's next call is served."""
    messages: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content}]
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                anthropic.AsyncAnthropic(base_url=run.url, api_key=KEY, max_retries=0) as sdk):
        with pytest.raises(anthropic.BadRequestError) as refused:
            await sdk.messages.create(model=HAIKU, max_tokens=8, messages=messages)
        error = refused.value.body["error"]  # type: ignore[index]
        assert error["type"] == "invalid_request_error"
        assert "messages[1].content" in error["message"], error
        assert fake_api.requests == 0 and run.totals("alpha").calls == 0
        _nothing_held(run)
        await sdk.messages.create(model=HAIKU, max_tokens=8,
                                  messages=[{"role": "user", "content": "hi"}])
        charged = run.totals("alpha")
        assert (charged.calls, charged.prompt_tokens) == (1, reported_sum(fake_api).prompt_tokens)
        _nothing_held(run)


async def test_21_r2_1_odd_content_inside_blocks_is_forwarded_not_a_500(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R2.1: what a block holds is the API's to judge: a tool result or document
    whose content is a number is estimated from its text and forwarded (it was a 500
    from the token count), and charged what the upstream reported."""
    blocks = [{"type": "tool_result", "tool_use_id": "t1", "content": 12345},
              {"type": "document", "source": {"type": "content", "content": 7.5}}]
    messages: Any = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": blocks}]
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                anthropic.AsyncAnthropic(base_url=run.url, api_key=KEY, max_retries=0) as sdk):
        reply = await sdk.messages.create(model=HAIKU, max_tokens=8, messages=messages)
        assert reply.type == "message" and fake_api.requests == 1
        charged = run.totals("alpha")
        assert (charged.calls, charged.prompt_tokens) == (1, reported_sum(fake_api).prompt_tokens)
        _nothing_held(run)


async def _answer_to(url: str, sent: bytes) -> bytes:
    """What the server sends on a connection given ``sent`` and then nothing more, until
    it closes the connection (the bound only keeps a broken server from hanging CI)."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with anyio.fail_after(60):
        async with await anyio.connect_tcp(host, int(port)) as sock:
            if sent:
                await sock.send(sent)
            try:
                while True:
                    received += await sock.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return received


async def test_21_a_request_that_never_arrives_whole_gets_a_408_and_its_socket_back(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, slowloris: a head or body that stops short (declared length or chunks) gets
    a 408 naming ``serve.request_timeout_s`` and the connection closes (uvicorn alone
    held such sockets for good); a connection that sends nothing is closed silently.
    None reaches the upstream or holds anything, while a call whose answer takes longer
    than the timeout (a slow upstream) is still answered and charged."""
    head = f"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n".encode()
    stalled = [head, head + b"content-length: 100\r\n\r\n{\"mo",
               head + b"transfer-encoding: chunked\r\n\r\n4\r\n{\"mo\r\n"]
    config = serve_config(tmp_path, fake_api.base_url, _keys(), request_timeout_s=0.3)
    async with (serving(config) as run,
                anthropic.AsyncAnthropic(base_url=run.url, api_key=KEY, max_retries=0) as sdk):
        for sent in stalled:
            answer = await _answer_to(run.url, sent)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert error["type"] == "invalid_request_error"
            assert "serve.request_timeout_s = 0.3 s" in error["message"]
        assert await _answer_to(run.url, b"") == b""
        assert fake_api.requests == 0
        _nothing_held(run)
        fake_api.inject(Fault("slow", delay_s=1.0))
        reply = await sdk.messages.create(model=HAIKU, max_tokens=8,
                                          messages=[{"role": "user", "content": "hi"}])
        assert reply.type == "message" and run.totals("alpha").calls == 1
        _nothing_held(run)


@pytest.mark.parametrize("head", [
    b"content-length: 5\r\ncontent-length: 3\r\n",  # two lengths: request smuggling
    b"content-length: 5\r\ntransfer-encoding: chunked\r\n",
    b"content-length: -5\r\n",
    b"x-vibe-task: a\x01b\r\ncontent-length: 5\r\n",  # a control character
])
async def test_21_a_request_http_itself_refuses_gets_the_apis_error_shape(
    fake_api: FakeAnthropicServer, tmp_path: Path, head: bytes
) -> None:
    """#21: a head HTTP/1.1 forbids gets a 400 ``invalid_request_error`` in the API's
    JSON shape (uvicorn's was a text/plain line no SDK reads) and the connection
    closes; nothing reaches the upstream and the server goes on."""
    sent = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: " + KEY.encode() + \
        b"\r\n" + head + b"\r\n{}   "
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                anthropic.AsyncAnthropic(base_url=run.url, api_key=KEY, max_retries=0) as sdk):
        answer = await _answer_to(run.url, sent)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"content-type: application/json" in answer
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert error["type"] == "invalid_request_error" and "HTTP/1.1" in error["message"]
        reply = await sdk.messages.create(model=HAIKU, max_tokens=8,
                                          messages=[{"role": "user", "content": "hi"}])
        assert reply.type == "message" and fake_api.requests == 1
        _nothing_held(run)


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"model": "claude-haiku-4-5", "max_tokens": 5', "Expecting ',' delimiter"),
    (b'{"max_tokens": ' + b"9" * 5000 + b"}", "integer string conversion"),
    (b'{"model": "\xff"}', "can't decode byte 0xff"),
])
async def test_21_a_body_that_is_not_valid_json_gets_a_400_saying_where(
    fake_api: FakeAnthropicServer, tmp_path: Path, raw: bytes, reason: str
) -> None:
    """#21: a body the JSON parser refuses -- cut short, an integer of 5,000 digits, a
    byte that is not UTF-8 -- gets a 400 that says why (it said only "not a JSON
    object", as for ``[1, 2]``), on /v1/messages and count_tokens alike."""
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                httpx2.AsyncClient(base_url=run.url) as http):
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            answer = await http.post(path, content=raw, headers={"x-api-key": KEY})
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert "not valid JSON" in error["message"] and reason in error["message"], error
        assert fake_api.requests == 0
        _nothing_held(run)


async def test_r1_1_a_max_tokens_past_every_budget_is_refused_saying_what_it_needs(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R1.1, #21: ``max_tokens`` = 10**30 is refused at the key's budget without a retry,
    and the refusal says what this request needs (it read as a budget "at its limit"
    with 0 of 2,000,000 used); nothing is reserved, forwarded or charged."""
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "budget": {"tokens": 2_000_000}}]
    async with (serving(serve_config(tmp_path, fake_api.base_url, keys)) as run,
                anthropic.AsyncAnthropic(base_url=run.url, api_key=KEY, max_retries=0) as sdk):
        with pytest.raises(anthropic.BadRequestError) as refused:
            await sdk.messages.create(model=HAIKU, max_tokens=10**30, timeout=60,
                                      messages=[{"role": "user", "content": "hi"}])
        assert refused.value.response.headers["x-should-retry"] == "false"
        message = refused.value.body["error"]["message"]  # type: ignore[index]
        assert "task:alpha tokens used 0 of 2,000,000, this request needs 1e+30" in message
        assert fake_api.requests == 0 and run.totals("alpha").calls == 0
        _nothing_held(run)


async def test_r6_3_requests_the_upstream_refuses_as_malformed_are_not_model_failures(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R6.3, #21: a request forwarded upstream and refused there for its shape
    (``"system": 5``, a 400) is the client's fault, not the model's: a client sending
    ten of them left the model at 0 % success in ``status`` and the metrics, and such
    errors kept an unavailable model's error rate over ``max_error_rate`` so its
    health check could not pass.  Nothing is charged or held; the next call counts."""
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys())) as run,
                anthropic.AsyncAnthropic(base_url=run.url, api_key=KEY, max_retries=0) as sdk):
        bad: Any = 5
        for _ in range(10):
            with pytest.raises(anthropic.BadRequestError, match="system: "):
                await sdk.messages.create(model=HAIKU, max_tokens=8, system=bad,
                                          messages=[{"role": "user", "content": "hi"}])
        assert fake_api.requests == 10 and run.totals("alpha").calls == 0
        _nothing_held(run)
        health = run.served.orchestrator.gateway.health
        assert health.recent_error_rate("haiku") == 0.0
        await sdk.messages.create(model=HAIKU, max_tokens=8,
                                  messages=[{"role": "user", "content": "hi"}])
        stats = health.statistics().models["haiku"]
        assert (stats.calls, stats.errors, stats.success_rate) == (1, 0, 1.0)
        charged = run.totals("alpha")
        assert (charged.calls, charged.prompt_tokens) == (1, reported_sum(fake_api).prompt_tokens)
