"""scheduler.net, the one keep-alive HTTP/1.1 client layer under serve's upstream hop (#21)
and the provider's httpx transport (R7.5): each gets the connection kind it was built
for, and the provider sees every failure of the layer as the httpx exception the SDK
classifies.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
import pytest
from anyio.abc import SocketAttribute, SocketStream

from agents.providers import _transport
from agents.providers._transport import KeepAliveTransport
from scheduler import net
from scheduler.net._asyncio import AsyncioStream
from scheduler.serve._http import HttpClient

pytestmark = pytest.mark.real_asyncio  # real sockets

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


@asynccontextmanager
async def _server() -> AsyncIterator[str]:
    async def handle(stream: SocketStream) -> None:
        async with stream:
            try:
                while True:
                    if b"\r\n\r\n" in await stream.receive():
                        await stream.send(_OK)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
        tg.cancel_scope.cancel()


async def test_r21_serve_upstream_connections_ride_asyncios_own_transport() -> None:
    """#21: serve's upstream hop keeps its connections on the loop's transport (the
    cheaper path per call); the connection comes back to the pool after the answer."""
    async with _server() as url:
        client = HttpClient(url, timeout_s=5, connect_s=5)
        resp = await client.send("POST", "/v1/x", [], b"{}")
        assert (resp.status, await resp.read()) == (200, b"{}")
        await resp.aclose()
        conn = await client.pool.take(None)
        assert conn is not None and isinstance(conn.stream, AsyncioStream)
        await conn.close()
        await client.aclose()


async def test_r7_5_provider_connections_poll_their_socket_and_carry_keep_alive_probes(
) -> None:
    """R7.5: the provider's connections are anyio streams, so the idle check polls the
    socket itself (a server that closes right after answering is noticed at once), and
    they carry the SDK's TCP keep-alive options."""
    transport = KeepAliveTransport()
    async with _server() as url, httpx2.AsyncClient(transport=transport) as client:
        assert (await client.post(f"{url}/v1/messages", content=b"{}")).status_code == 200
        origin = ("http", "127.0.0.1", int(url.rsplit(":", 1)[1]))
        conn = await transport._pool.take(origin)
        assert conn is not None and conn.sock is not None
        assert not isinstance(conn.stream, AsyncioStream)
        assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        await conn.close()


def _net_errors() -> list[type[Exception]]:
    found: list[type[Exception]] = []
    for name in net.__all__:
        obj = getattr(net, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            found.append(obj)
    return found


@pytest.mark.parametrize("error", _net_errors(), ids=lambda e: e.__name__)
def test_r7_5_every_failure_of_the_layer_is_a_specific_httpx_exception(
        error: type[Exception]) -> None:
    """R7.5: the SDK tells timeouts (``APITimeoutError``) from connection failures by the
    httpx exception, so each of the layer's error classes maps to its own, timeouts to
    timeouts."""
    if error is net.HttpError:
        return  # only raised through its subclasses
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/messages")
    mapped = _transport._httpx_error(error("x"), request)
    assert type(mapped) is not httpx2.TransportError
    assert isinstance(mapped, httpx2.TimeoutException) == issubclass(
        error, net.HttpTimeout | net.ConnectTimedOut)
