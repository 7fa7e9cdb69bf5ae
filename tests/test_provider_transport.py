"""The provider's HTTP stack under the real SDK (R7.5: the anthropic SDK over real HTTP),
against scripted servers on real sockets: the keep-alive transport (connection reuse, a
connection the server closed while idle, bodies of every framing, dropped answers,
timeouts, the connection limit, the SDK's default client whenever a proxy is
configured) and when the SDK's own OpenTelemetry spans stay on (#23).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import anyio
import httpx2
import pytest
from anyio.abc import SocketStream

from agents import make_provider
from agents.providers import AnthropicProvider
from agents.providers import _anthropic as anthropic_module
from agents.providers._anthropic import _http_client
from agents.providers._transport import KeepAliveTransport
from scheduler import ProviderError, VibeConfig
from scheduler.config import ProviderConfig
from scheduler.core import ProviderTimeoutError
from tests._anthropic_helpers import SECRET_KEY, Recorder, request

# scripted servers on real sockets: they need real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]

_MESSAGE = json.dumps({
    "id": "msg_t", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "ok from the server"}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 3},
}).encode()
#: How one answer is framed on the wire.
Answer = Callable[[bytes], list[bytes]]


def sized(body: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body]


def chunked(body: bytes) -> list[bytes]:
    half = len(body) // 2
    parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:])]
    return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n", *parts, b"0\r\n\r\n"]


def until_close(body: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"connection: close\r\n\r\n" + body]


def streamed(body: bytes) -> list[bytes]:
    """A streamed message (server-sent events, chunked), whatever ``body`` is."""
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_s", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "ok"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 3},
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    parts = [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]
    return [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n",
            *(b"%x\r\n%s\r\n" % (len(p), p) for p in parts), b"0\r\n\r\n"]


def cut_short(body: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body[:10]]


@dataclass
class Scripted:
    """A Messages endpoint on 127.0.0.1: each answer framed by ``answer``; after each
    one the connection is closed when ``close_after`` says so (as a keep-alive timeout
    would, without telling the client)."""

    answer: Answer = sized
    close_after: bool = False
    silent: bool = False  # reads requests, never answers
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)
    url: str = ""

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            async with stream:
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    named = head.lower().partition(b"content-length: ")[2]
                    length = int(named.split(b"\r\n")[0] or 0)
                    while len(buffer) < length:
                        buffer += await stream.receive()
                    self.requests.append(head)
                    buffer = buffer[length:]
                    if self.silent:
                        await anyio.sleep_forever()
                    await anyio.sleep(0.02)  # keeps concurrent requests in flight together
                    for part in self.answer(_MESSAGE):
                        await stream.send(part)
                    if self.close_after or self.answer in (until_close, cut_short):
                        return
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        finally:
            self.open_now -= 1


@asynccontextmanager
async def serving(server: Scripted) -> AsyncIterator[Scripted]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server.url = f"http://127.0.0.1:{port}"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def provider_at(server: Scripted, rec: Recorder | None = None,
                **config: object) -> AnthropicProvider:
    cfg = ProviderConfig.model_validate({"kind": "anthropic", "base_url": server.url,
                                         "max_retries": 0, **config})
    rec = rec or Recorder()
    return AnthropicProvider(cfg, api_key=SECRET_KEY, on_attempt=rec.on_attempt,
                             sleep=rec.sleep)


async def calls(provider: AnthropicProvider, n: int) -> list[str]:
    try:
        return [(await provider.complete(request())).text for _ in range(n)]
    finally:
        await provider.aclose()


async def test_r7_5_calls_reuse_one_keep_alive_connection() -> None:
    """R7.5: the SDK's client runs on the keep-alive transport; calls one after another
    share one connection, each sent whole with the SDK's own headers."""
    async with serving(Scripted()) as server:
        provider = provider_at(server)
        assert isinstance(provider._client._client._transport, KeepAliveTransport)
        texts = await calls(provider, 3)
    assert texts == ["ok from the server"] * 3
    assert server.connections == 1 and len(server.requests) == 3
    head = server.requests[0].lower()
    assert head.startswith(b"post /v1/messages http/1.1\r\n")
    assert SECRET_KEY.lower().encode() in head  # the SDK's auth header, whichever it is
    assert f"host: {server.url.removeprefix('http://')}".encode() in head


async def test_r7_5_a_stream_abandoned_mid_way_gives_its_connection_back() -> None:
    """R7.5: when the caller's text sink fails mid-stream the response is closed at
    once, its connection slot free again (not when the garbage collector gets to it)."""

    def sink(text: str) -> None:
        raise RuntimeError("the sink broke")

    async with serving(Scripted(answer=streamed)) as server:
        provider = provider_at(server)
        transport = provider._client._client._transport
        assert isinstance(transport, KeepAliveTransport)
        slots = transport._slots.value
        try:
            assert (await provider.complete(request(stream=True))).text == "ok"
            broken = replace(request(stream=True), on_text=sink)
            with pytest.raises(ProviderError):
                await provider.complete(broken)
            assert transport._slots.value == slots
        finally:
            await provider.aclose()


@pytest.mark.parametrize("proxy_env", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY"])
def test_r7_5_a_configured_proxy_keeps_the_sdks_default_client(
        monkeypatch: pytest.MonkeyPatch, proxy_env: str) -> None:
    """R7.5: httpx honours proxy variables only on its own transport, so with one set
    the provider leaves the SDK its default client."""
    assert _http_client() is not None
    monkeypatch.setenv(proxy_env, "http://127.0.0.1:9")
    assert _http_client() is None


async def test_r7_5_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    """R7.5: a server that drops each connection after answering (its keep-alive
    timeout) costs a new connection per call, never a failed call."""
    async with serving(Scripted(close_after=True)) as server:
        rec = Recorder()
        texts = await calls(provider_at(server, rec), 3)
    assert texts == ["ok from the server"] * 3
    assert server.connections == 3 and rec.kinds == [None] * 3


@pytest.mark.parametrize("answer", [chunked, until_close], ids=["chunked", "until-close"])
async def test_r7_5_bodies_chunked_or_ended_by_close_arrive_whole(answer: Answer) -> None:
    """R7.5: a chunked body, and one that ends when the server closes, are read whole;
    a connection whose body ended by closing is not used again."""
    async with serving(Scripted(answer=answer)) as server:
        texts = await calls(provider_at(server), 2)
    assert texts == ["ok from the server"] * 2
    assert server.connections == (1 if answer is chunked else 2)


async def test_r7_5_an_answer_cut_short_is_a_connection_failure() -> None:
    """R7.5: a body shorter than its content-length fails as a dropped connection."""
    async with serving(Scripted(answer=cut_short)) as server:
        rec = Recorder()
        with pytest.raises(ProviderError, match="connection failed"):
            await calls(provider_at(server, rec), 1)
    assert rec.kinds == ["connection"]


async def test_r7_5_a_silent_server_times_out() -> None:
    """R7.5: the read timeout (``provider.timeout_s``) ends a call nobody answers."""
    async with serving(Scripted(silent=True)) as server:
        rec = Recorder()
        with pytest.raises(ProviderTimeoutError):
            await calls(provider_at(server, rec, timeout_s=0.2), 1)
    assert rec.kinds == ["timeout"]


async def test_r7_5_a_refused_connection_is_a_connection_failure() -> None:
    """R7.5: nothing listening is a connection failure, classified as such."""
    async with serving(Scripted()) as server:
        url = server.url
    rec = Recorder()
    provider = AnthropicProvider(
        ProviderConfig(kind="anthropic", base_url=url, max_retries=0), api_key=SECRET_KEY,
        on_attempt=rec.on_attempt, sleep=rec.sleep)
    with pytest.raises(ProviderError, match="connection failed"):
        await calls(provider, 1)
    assert rec.kinds == ["connection"]


async def test_r7_5_requests_beyond_the_connection_limit_wait_for_a_slot() -> None:
    """R7.5: with ``max_connections`` 2, six concurrent requests all succeed on at most
    two connections; a request that cannot get a slot within the pool timeout fails."""
    limited = KeepAliveTransport(max_connections=2)
    async with serving(Scripted()) as server, httpx2.AsyncClient(transport=limited) as client:
        url = f"{server.url}/v1/messages"
        statuses: list[int] = []

        async def post() -> None:
            r = await client.post(url, content=b"{}")
            statuses.append(r.status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(post)
        assert statuses == [200] * 6 and server.most_open <= 2

        async with client.stream("POST", url, content=b"{}"), \
                client.stream("POST", url, content=b"{}"):
            with pytest.raises(httpx2.PoolTimeout):
                await client.post(url, content=b"{}", timeout=httpx2.Timeout(5.0, pool=0.05))


async def test_r7_5_a_head_request_ends_at_its_head() -> None:
    """R7.5: an answer to HEAD has no body, though its content-length names one."""
    async with serving(Scripted()) as server, \
            httpx2.AsyncClient(transport=KeepAliveTransport()) as client:
        with anyio.fail_after(5):
            r = await client.head(f"{server.url}/v1/models")
    assert r.status_code == 200 and r.content == b""


async def test_r7_5_a_header_holding_a_line_break_is_never_sent() -> None:
    """R7.5: a header value with CR/LF would smuggle a header: refused before sending."""
    async with serving(Scripted()) as server, \
            httpx2.AsyncClient(transport=KeepAliveTransport()) as client:
        with pytest.raises(httpx2.LocalProtocolError):
            await client.post(f"{server.url}/v1/messages", content=b"{}",
                              headers={"x-note": "a\r\nx-api-key: stolen"})
    assert server.requests == []


def _sdk_spans_on(provider: AnthropicProvider) -> bool:
    return bool(provider._client._open_telemetry["traces"]["enabled"])


def test_r7_5_the_sdks_spans_are_off_only_when_nothing_could_record_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """R7.5, #23: with no tracer provider installed and tracing off the SDK's per-call
    span work is skipped; the run's tracing (config or ``OTEL_TRACES_EXPORTER``) or an
    application's tracer provider keeps it."""
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setattr(anthropic_module, "_tracer_provider_installed", lambda: False)
    cfg = ProviderConfig(kind="anthropic", base_url="http://127.0.0.1:9")
    assert not _sdk_spans_on(AnthropicProvider(cfg, api_key=SECRET_KEY))
    assert _sdk_spans_on(AnthropicProvider(cfg, api_key=SECRET_KEY, sdk_spans=True))
    monkeypatch.setenv("VIBE_TEST_KEY", SECRET_KEY)
    provider = {"kind": "anthropic", "base_url": "http://127.0.0.1:9",
                "api_key_env": "VIBE_TEST_KEY"}
    for tracing, expected in ((False, False), (True, True)):
        config = VibeConfig.model_validate({"provider": provider,
                                            "tracing": {"enabled": tracing}})
        made = make_provider(config)
        assert isinstance(made, AnthropicProvider) and _sdk_spans_on(made) is expected
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert _sdk_spans_on(AnthropicProvider(cfg, api_key=SECRET_KEY))
    monkeypatch.setattr(anthropic_module, "_tracer_provider_installed", lambda: True)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    assert _sdk_spans_on(AnthropicProvider(cfg, api_key=SECRET_KEY))


async def test_r7_5_an_applications_tracer_provider_records_the_sdks_spans(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """R7.5, #23: an application that installed an SDK tracer provider still gets the
    anthropic SDK's own span for each call, as before."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    installed = TracerProvider()
    installed.add_span_processor(SimpleSpanProcessor(memory))
    # installed for this test only: OTel allows one global provider per process, and
    # other test files install theirs
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", installed)
    async with serving(Scripted()) as server:
        await calls(provider_at(server), 1)
    models = [(s.attributes or {}).get("gen_ai.request.model") for s in memory.get_finished_spans()]
    assert "claude-sonnet-4-6" in models
