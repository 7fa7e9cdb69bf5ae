"""serve's uvicorn protocol (#21): a response's writes made in one turn of the event loop
go out in one write -- a JSON answer's head and body arrive together -- while streamed
parts written turns apart still arrive each in time, and a connection that closes after
its answer sends that answer first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn

from scheduler.config import config_from_dict
from scheduler.serve import Served, listen
from scheduler.serve._protocol import GatheredWritesProtocol, _Gathered
from scheduler.serve._server import uvicorn_config
from tests._serve_helpers import CLIENT_KEYS, serve_config

pytestmark = pytest.mark.real_asyncio  # real sockets and uvicorn, which needs asyncio

BODY = b'{"type": "message", "content": []}'


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for part in (b"event: a\n\n", b"event: b\n\n"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await anyio.sleep(0.01)  # the next part is written turns later
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode())]
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY, "more_body": False})


class _Recorder:
    """The connection's transport, recording what each of its write calls sent."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport, self.writes = transport, writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def writelines(self, parts: Any) -> None:
        parts = [bytes(p) for p in parts]
        self.writes.append(b"".join(parts))
        self._transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


#: What each write call of the server's connections sent, in order.
WRITES: list[bytes] = []


class _Recording(GatheredWritesProtocol):
    def connection_made(self, transport: Any) -> None:
        recorder: Any = _Recorder(transport, WRITES)  # a transport by its methods
        super().connection_made(recorder)


@asynccontextmanager
async def _server() -> AsyncIterator[tuple[str, int]]:
    WRITES.clear()
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(_app, http=_Recording, lifespan="off",
                                           log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await anyio.sleep(0.01)
        try:
            yield "127.0.0.1", sock.getsockname()[1]
        finally:
            server.should_exit = True


async def _first_read(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """What the first read of the answer returns, and everything until the server closes
    or the answer is whole."""
    async with await anyio.connect_tcp(host, port) as conn:
        await conn.send(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        first = await conn.receive()
        rest = first
        with anyio.move_on_after(5):
            while not rest.endswith(BODY):
                try:
                    rest += await conn.receive()
                except anyio.EndOfStream:
                    break
        return first, rest


async def test_21_a_json_answer_is_one_write() -> None:
    """The head and the body go out in one write (on a kept-alive connection's later
    answers too): the client's first read has both."""
    async with _server() as (host, port), \
            httpx2.AsyncClient(base_url=f"http://{host}:{port}") as http:
        for _ in range(3):
            assert (await http.get("/json")).content == BODY
        first, _ = await _first_read(host, port, "/json")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n" + BODY)
    assert len(WRITES) == 4
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b"\r\n\r\n" + BODY)
               for w in WRITES)


async def test_21_a_connection_closed_after_its_answer_sends_the_answer_first() -> None:
    async with _server() as (host, port):
        _, whole = await _first_read(host, port, "/close")
        assert b"connection: close" in whole and whole.endswith(BODY)


async def test_21_streamed_parts_arrive_as_they_are_written() -> None:
    async with _server() as (host, port), \
            httpx2.AsyncClient(base_url=f"http://{host}:{port}") as http:
        async with http.stream("GET", "/stream") as resp:
            parts = [part async for part in resp.aiter_raw()]
        assert b"".join(parts) == b"event: a\n\nevent: b\n\n"
        assert len(parts) == 2  # each part was sent when written, not held to the end
        plain = await http.get("/json")  # the same connection serves the next request
        assert plain.content == BODY
    # the stream's head went out with its first part, the rest each as written
    assert len(WRITES) == 4 and WRITES[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert WRITES[0].endswith(b"event: a\n\n\r\n") and WRITES[2] == b"0\r\n\r\n"


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def writelines(self, parts: Any) -> None:
        self.sent.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Loop:
    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, fn: Any) -> None:
        self.soon.append(fn)

    def turn_ends(self) -> None:
        soon, self.soon = self.soon, []
        for fn in soon:
            fn()


def test_21_only_a_head_waits_and_never_past_the_turn_or_a_close() -> None:
    transport, loop = _Transport(), _Loop()
    gathered: Any = _Gathered(transport, loop)  # type: ignore[arg-type]
    gathered.write(b"before")  # not a head: out at once
    assert transport.sent == [b"before"]
    gathered.hold_next()
    gathered.write(b"head")
    assert transport.sent == [b"before"]  # held
    gathered.write(b"body")
    gathered.write(b"more")  # a stream's later parts: out as written
    assert transport.sent == [b"before", b"headbody", b"more"]
    loop.turn_ends()  # the flush finds nothing held
    assert transport.sent == [b"before", b"headbody", b"more"]
    gathered.hold_next()
    gathered.write(b"lone head")
    loop.turn_ends()  # nothing followed it this turn: it goes out alone
    assert transport.sent[-1] == b"lone head"
    gathered.hold_next()
    gathered.write(b"last head")
    gathered.close()  # written before the connection closes
    assert transport.sent[-1] == b"last head" and transport.closed
    loop.turn_ends()
    assert transport.sent.count(b"last head") == 1


async def test_21_serve_runs_uvicorn_with_this_protocol(tmp_path: Path) -> None:
    """``vibe-engine serve``'s uvicorn set-up (which the tests' server uses too) loads
    this protocol as its HTTP protocol, with the config's request timeout: the behaviour
    above is what serve's clients get."""
    data = serve_config(tmp_path, "http://127.0.0.1:9", [{"name": "alpha",
                                                          "key_env": "VIBE_KEY_A"}])
    served = Served(config_from_dict(data), env=CLIENT_KEYS)
    config = uvicorn_config(served)
    config.load()
    protocol = config.http_protocol_class
    assert issubclass(protocol, GatheredWritesProtocol)
    assert protocol.request_timeout_s == served.config.serve.request_timeout_s == 120.0
    assert (config.access_log, config.server_header, config.proxy_headers) == (
        False, False, False)
