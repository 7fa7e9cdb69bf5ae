"""Faithful pass-through (#21): the client's body bytes, query string and beta headers reach
the upstream as sent; SSE events and content blocks of types nobody here knows come back
byte for byte; bad requests get the API's error shapes and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from scheduler.serve import listen
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

pytestmark = pytest.mark.real_asyncio  # real sockets: two uvicorn servers

KEY = {"x-api-key": CLIENT_KEYS["VIBE_KEY_A"]}
USAGE_START = {"input_tokens": 21, "output_tokens": 1, "cache_read_input_tokens": 5,
               "cache_creation_input_tokens": 7}
EVENTS = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_x", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [], "stop_reason": None, "usage": USAGE_START}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "vibe_future_block", "payload": [1, 2]}}),
    ("vibe_future_event", {"type": "vibe_future_event", "data": "kept"}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                       "usage": {"output_tokens": 33}}),
    ("message_stop", {"type": "message_stop"}),
]
SSE = b"".join(f"event: {k}\ndata: {json.dumps(v)}\n\n".encode() for k, v in EVENTS)


class Upstream:
    """An upstream that records what it receives and answers with unknown types."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str], str]] = []

    async def messages(self, request: Request) -> Response:
        raw = await request.body()
        self.received.append((raw, dict(request.headers), request.url.query))
        if json.loads(raw).get("stream"):
            async def chunks() -> AsyncIterator[bytes]:
                for i in range(0, len(SSE), 97):  # split mid-event, as networks do
                    yield SSE[i:i + 97]
            return StreamingResponse(chunks(), media_type="text/event-stream")
        return Response(json.dumps({
            "id": "msg_y", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "vibe_future_block", "payload": {"x": 1}}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 4}}),
            media_type="application/json")


@asynccontextmanager
async def upstream() -> AsyncIterator[tuple[str, Upstream]]:
    up = Upstream()
    app = Starlette(routes=[Route("/v1/messages", up.messages, methods=["POST"])])
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}", up
        finally:
            server.should_exit = True


async def test_21_bytes_headers_and_unknown_types_pass_through(tmp_path: Path) -> None:
    """#21: the upstream gets the client's exact bytes (unknown fields, key order and
    spacing), its query string and beta header, and the server's key instead of the
    client's; unknown SSE events and block types come back byte for byte; the key is
    charged the streamed usage, cache tokens included (R2.4)."""
    async with upstream() as (url, up):
        keys = [{"name": "alpha", "key_env": "VIBE_KEY_A"}]
        async with serving(serve_config(tmp_path, url, keys)) as run, \
                httpx2.AsyncClient(base_url=run.url) as http:
            body = (b'{"model": "claude-haiku-4-5",  "max_tokens": 50, "stream": true, '
                    b'"messages": [{"role": "user", "content": "hi"}], "vibe_new_field": {"a": 1}}')
            headers = {**KEY, "anthropic-beta": "future-feature-2099-01-01",
                       "anthropic-version": "2023-06-01", "content-type": "application/json"}
            async with http.stream("POST", "/v1/messages?beta=true", content=body,
                                   headers=headers) as resp:
                got = b"".join([chunk async for chunk in resp.aiter_raw()])
            assert resp.status_code == 200 and got == SSE
            plain = await http.post("/v1/messages", headers=headers, content=body.replace(
                b'"stream": true', b'"stream": false'))
            assert plain.json()["content"] == [{"type": "vibe_future_block", "payload": {"x": 1}}]
            charged = await run.settled("alpha", 2)
        raw, sent_headers, query = up.received[0]
        assert raw == body and query == "beta=true"
        assert sent_headers["anthropic-beta"] == "future-feature-2099-01-01"
        assert sent_headers["x-api-key"] == "sk-ant-api03-TESTSECRET-5f2b9c1e7d"
        assert CLIENT_KEYS["VIBE_KEY_A"] not in json.dumps(sent_headers)
        assert (charged.prompt_tokens, charged.completion_tokens, charged.cache_read_tokens,
                charged.cache_write_tokens) == (21 + 10, 33 + 4, 5, 7)


async def test_21_bad_requests_get_api_errors_and_the_server_keeps_serving(
    tmp_path: Path
) -> None:
    """#21: not JSON, no messages, a bad max_tokens, no model: each a 400
    invalid_request_error naming the field; an unknown path a 404 not_found_error and a
    wrong method a 405, in the API's error shape; then a good request still succeeds."""
    async with upstream() as (url, up):
        keys = [{"name": "alpha", "key_env": "VIBE_KEY_A"}]
        async with serving(serve_config(tmp_path, url, keys)) as run, \
                httpx2.AsyncClient(base_url=run.url) as http:
            good: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 10,
                                    "messages": [{"role": "user", "content": "hi"}]}
            bad = [b"{not json", json.dumps({**good, "messages": "hi"}).encode(),
                   json.dumps({**good, "max_tokens": -3}).encode(),
                   json.dumps({k: v for k, v in good.items() if k != "model"}).encode()]
            for body, field in zip(bad, ("body", "messages", "max_tokens", "model"),
                                   strict=True):
                resp = await http.post("/v1/messages", content=body, headers=KEY)
                assert resp.status_code == 400, body
                error = resp.json()["error"]
                assert error["type"] == "invalid_request_error" and field in error["message"]
            for resp, status, kind in (
                    (await http.post("/v1/nothing", json=good, headers=KEY), 404,
                     "not_found_error"),
                    (await http.get("/v1/messages", headers=KEY), 405, "invalid_request_error")):
                assert (resp.status_code, resp.json()["error"]["type"]) == (status, kind)
            assert (await http.post("/v1/messages/?beta=true", json=good,
                                    headers=KEY)).status_code == 200
        assert len(up.received) == 1
