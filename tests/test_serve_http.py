"""serve's upstream HTTP/1.1 client (#21): keep-alive reuse, Content-Length, chunked and
read-until-close bodies, an idle connection the upstream closed, timeouts, TLS, the
environment's proxy, and a POST that is never sent twice once the upstream may have it.

The upstream is a real TCP server here whose every answer is scripted byte for byte.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import anyio
import pytest
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSListener

from scheduler.net import ConnectFailed, Disconnected, HttpTimeout
from scheduler.serve._http import HttpClient
from scheduler.serve._upstream import UpstreamProvider
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

pytestmark = pytest.mark.real_asyncio  # real sockets: a scripted TCP upstream

#: ``respond(stream, n)`` answers the n-th request (from 1); False closes the connection.
Respond = Callable[[ByteStream, int], Awaitable[bool]]
JSON_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@dataclass
class Upstream:
    respond: Respond
    url: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, stream: ByteStream) -> None:
        self.connections += 1
        buf = b""
        async with stream:
            while True:
                try:
                    request, buf = await _read_request(stream, buf)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                self.requests.append(request)
                if not await self.respond(stream, len(self.requests)):
                    return


async def _read_request(stream: ByteStream, buf: bytes) -> tuple[bytes, bytes]:
    while b"\r\n\r\n" not in buf:
        buf += await stream.receive()
    head, first = buf.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    rest = bytearray(first)
    while len(rest) < length:
        rest += await stream.receive()
    return head + b"\r\n\r\n" + rest[:length], bytes(rest[length:])


@asynccontextmanager
async def upstream(respond: Respond, tls: ssl.SSLContext | None = None
                   ) -> AsyncIterator[Upstream]:
    up = Upstream(respond)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    up.url = f"{'https' if tls else 'http'}://127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
    served = TLSListener(listener, tls, standard_compatible=False) if tls else listener
    async with served, anyio.create_task_group() as tg:
        tg.start_soon(served.serve, up.handle)
        yield up
        tg.cancel_scope.cancel()


async def _ok(stream: ByteStream, n: int) -> bool:
    await stream.send(JSON_OK)
    return True


async def _get(client: HttpClient, target: str = "/v1/x") -> tuple[int, bytes]:
    resp = await client.send("POST", target, [("content-type", "application/json")], b"{}")
    try:
        return resp.status, await resp.read()
    finally:
        await resp.aclose()


# the drop-in client may run on trio; serve runs on uvloop where it is installed
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio", ("asyncio", {"use_uvloop": True})])
async def test_r21_keep_alive_reuses_one_connection_for_sequential_calls() -> None:
    async with upstream(_ok) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        assert [await _get(client) for _ in range(3)] == [(200, b"{}")] * 3
        await client.aclose()
    assert up.connections == 1
    assert up.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"content-length: 2\r\n" in up.requests[0]


async def test_r21_chunked_body_is_handed_over_as_it_arrives() -> None:
    more = anyio.Event()

    async def chunked(stream: ByteStream, n: int) -> bool:
        await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await more.wait()
        await stream.send(b"6\r\n world\r\n0\r\n\r\n")
        return True

    async with upstream(chunked) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        resp = await client.send("POST", "/v1/x", [], b"")
        got = []
        async for chunk in resp.chunks():
            got.append(chunk)
            more.set()  # the rest is sent only once the first part reached us
        await resp.aclose()
        assert got == [b"hello", b" world"]
        more = anyio.Event()
        more.set()
        assert await _get(client) == (200, b"hello world")
        await client.aclose()
    assert up.connections == 1


async def test_r21_a_large_answer_read_slowly_arrives_whole_on_a_reusable_connection(
) -> None:
    """#21: a 32 MiB request goes out whole (more than the kernel takes at once: sending
    waits for room), and the client reads ahead only so far (reading pauses, then
    resumes as the answer is consumed): nothing of a 2 MiB answer is lost on the way."""
    big = bytes(range(256)) * 8192
    request = big * 16

    async def large(stream: ByteStream, n: int) -> bool:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
        return True

    async with upstream(large) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        resp = await client.send("POST", "/v1/x", [], request)
        assert up.requests[0].endswith(b"\r\n\r\n" + request)
        await anyio.sleep(0.2)  # the upstream sends it all meanwhile
        got = b""
        async for chunk in resp.chunks():
            got += chunk
        await resp.aclose()
        assert got == big
        assert await _get(client) == (200, big)
        await client.aclose()
    assert up.connections == 1


async def test_r21_idle_connection_closed_by_the_upstream_is_not_used_again() -> None:
    async def once(stream: ByteStream, n: int) -> bool:
        await stream.send(JSON_OK)
        return False  # keep-alive announced, then closed while idle

    async with upstream(once) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        assert await _get(client) == (200, b"{}")
        await anyio.sleep(0.1)
        assert await _get(client) == (200, b"{}")
        await client.aclose()
    assert (up.connections, len(up.requests)) == (2, 2)  # each POST sent once


async def test_r21_a_post_the_upstream_may_have_received_is_never_sent_again() -> None:
    async def second_dies(stream: ByteStream, n: int) -> bool:
        if n == 2:
            return False  # took the request, closed without answering
        await stream.send(JSON_OK)
        return True

    async with upstream(second_dies) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        assert await _get(client) == (200, b"{}")
        with pytest.raises(Disconnected):
            await _get(client)
        await client.aclose()
    assert (up.connections, len(up.requests)) == (1, 2)


async def test_r21_connection_close_and_read_until_close_bodies() -> None:
    async def closing(stream: ByteStream, n: int) -> bool:
        await stream.send(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        return False

    async with upstream(closing) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        assert await _get(client) == (200, b"until the end")
        assert await _get(client) == (200, b"until the end")
        await client.aclose()
    assert up.connections == 2


async def test_r21_read_timeouts_before_and_during_the_answer() -> None:
    async def silent(stream: ByteStream, n: int) -> bool:
        if n == 2:
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await anyio.sleep(30)
        return False

    async with upstream(silent) as up:
        client = HttpClient(up.url, timeout_s=0.3, connect_s=5)
        with pytest.raises(HttpTimeout):
            await _get(client)
        resp = await client.send("POST", "/v1/x", [], b"")
        with pytest.raises(HttpTimeout):
            await resp.read()
        await resp.aclose()
        await client.aclose()


async def test_r21_a_request_head_built_once_carries_each_body_with_its_own_length() -> None:
    """Requests with the same method, target and headers share their head; each still
    says its own body's length, and other headers make another head."""
    async with upstream(_ok) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        beta = (("anthropic-beta", "b1"),)
        for headers, body in ((beta, b"{}"), (beta, b'{"a": 12345}'), ((), b"[]")):
            resp = await client.send("POST", "/v1/x", headers, body)
            await resp.read()
            await resp.aclose()
        await client.aclose()
    first, second, third = up.requests
    assert first.endswith(b"anthropic-beta: b1\r\ncontent-length: 2\r\n\r\n{}")
    assert second.endswith(b"anthropic-beta: b1\r\ncontent-length: 12\r\n\r\n{\"a\": 12345}")
    assert b"anthropic-beta" not in third and third.endswith(b"content-length: 2\r\n\r\n[]")


async def test_r21_refused_connection_and_header_injection() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()
    with pytest.raises(ConnectFailed):
        await _get(HttpClient(f"http://127.0.0.1:{port}", timeout_s=5, connect_s=5))
    async with upstream(_ok) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        for _ in range(2):  # refused each time: a refused head is never kept
            with pytest.raises(ValueError, match="line break"):
                await client.send("POST", "/v1/x", [("anthropic-beta", "a\r\nx-api-key: b")],
                                  b"")
        with pytest.raises(ValueError, match="line break"):
            await client.send("POST", "/v1/x?q=1 HTTP/1.1", [], b"")
        await client.aclose()
    assert up.requests == []


async def test_r21_https_upstream_with_the_default_trust_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await anyio.run_process(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                             "-days", "1", "-subj", "/CN=127.0.0.1",
                             "-addext", "subjectAltName=IP:127.0.0.1",
                             "-keyout", str(key), "-out", str(cert)])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as any CA would be
    async with upstream(_ok, tls=server_ctx) as up:
        client = HttpClient(up.url, timeout_s=5, connect_s=5)
        assert [await _get(client) for _ in range(2)] == [(200, b"{}")] * 2
        await client.aclose()
    assert up.connections == 1
    monkeypatch.delenv("SSL_CERT_FILE")
    async with upstream(_ok, tls=server_ctx) as up:  # not trusted: refused, nothing sent
        with pytest.raises(ConnectFailed):
            await _get(HttpClient(up.url, timeout_s=5, connect_s=5))
    assert up.requests == []


async def test_r21_an_environment_proxy_carries_the_calls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with upstream(_ok) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        provider = UpstreamProvider("http://upstream.example", "sk-server")
        assert await provider.post("/v1/messages/count_tokens", b"{}", {}) == (200, b"{}")
        await provider.aclose()
    assert proxy.requests[0].startswith(
        b"POST http://upstream.example/v1/messages/count_tokens HTTP/1.1\r\n")


async def test_r21_upstream_dying_mid_stream_errors_the_client_and_settles_what_started(
        tmp_path: Path) -> None:
    start = {"type": "message_start", "message": {
        "id": "msg_cut", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [], "stop_reason": None, "usage": {"input_tokens": 21, "output_tokens": 1}}}
    sse = f"event: message_start\ndata: {json.dumps(start)}\n\n".encode()

    async def dies(stream: ByteStream, n: int) -> bool:
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                          b"transfer-encoding: chunked\r\n\r\n"
                          + f"{len(sse):x}\r\n".encode() + sse + b"\r\n")
        await anyio.sleep(0.05)
        return False  # gone before the last chunk

    async with upstream(dies) as up:
        data = serve_config(tmp_path, up.url,
                            [{"name": "alpha", "key_env": "VIBE_KEY_A"}])
        async with serving(data) as run:
            client = anthropic.AsyncAnthropic(api_key=CLIENT_KEYS["VIBE_KEY_A"],
                                              base_url=run.url, max_retries=0)
            with pytest.raises(anthropic.APIError, match="dropped"):
                async with client.messages.stream(
                        model="claude-haiku-4-5", max_tokens=16,
                        messages=[{"role": "user", "content": "hi"}]) as stream:
                    await stream.get_final_message()
            totals = await run.settled("alpha", 1)
            await client.close()
    # its input as message_start counted it; its output, never counted, all it could be:
    # 16, not message_start's 1 (R2.1)
    assert (totals.prompt_tokens, totals.completion_tokens) == (21, 16)
    assert len(up.requests) == 1


async def test_r7_2_an_upstream_error_not_in_the_api_shape_reaches_the_client_as_json(
        tmp_path: Path) -> None:
    """R7.2: a plain-text 500 (a crashed upstream, a proxy's page) was relayed as it came
    under ``content-type: application/json``; the client now gets the API's error shape,
    the upstream's own text in its message."""
    async def plain_500(stream: ByteStream, n: int) -> bool:
        await stream.send(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain"
                          b"\r\ncontent-length: 21\r\n\r\nInternal Server Error")
        return True

    async with upstream(plain_500) as up:
        data = serve_config(tmp_path, up.url, [{"name": "alpha", "key_env": "VIBE_KEY_A"}])
        async with serving(data) as run:
            client = anthropic.AsyncAnthropic(api_key=CLIENT_KEYS["VIBE_KEY_A"],
                                              base_url=run.url, max_retries=0)
            with pytest.raises(anthropic.InternalServerError) as caught:
                await client.messages.create(
                    model="claude-haiku-4-5", max_tokens=16,
                    messages=[{"role": "user", "content": "hi"}])
            await client.close()
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "answered 500: Internal Server Error" in body["error"]["message"]
