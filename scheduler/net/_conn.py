"""One client connection: connect (TLS included), send, receive, the idle liveness check.

On asyncio a connection is :mod:`._asyncio`'s stream over the loop's own transport, on
trio anyio's socket stream.  Failures are raised as :mod:`._errors`' classes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import httpx2 as httpx
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream

from scheduler.core import on_asyncio
from scheduler.net._asyncio import AsyncioStream
from scheduler.net._asyncio import connect as asyncio_connect
from scheduler.net._errors import (
    ConnectFailed,
    ConnectTimedOut,
    HttpTimeout,
    ReadFailed,
    WriteTimedOut,
)

CHUNK = 65536
STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
#: ``(level, option, value)`` for ``setsockopt`` on each new connection.
SocketOptions = Sequence[tuple[int, int, int]]


def default_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (its trust store and ``SSL_CERT_FILE`` handling),
    offering HTTP/1.1 only."""
    context = httpx.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class Conn:
    """One connection, with the socket kept for the idle liveness check."""

    __slots__ = ("idle_since", "sock", "stream")

    def __init__(self, stream: ByteStream | AsyncioStream) -> None:
        self.stream = stream
        self.sock: socket.socket | None = (
            None if isinstance(stream, AsyncioStream)
            else stream.extra(SocketAttribute.raw_socket, None))
        self.idle_since = 0.0

    def readable(self) -> bool:
        """An idle connection with something to read was closed by the server (or sent
        what nobody asked for): either way it cannot carry a request."""
        if isinstance(self.stream, AsyncioStream):
            return self.stream.stale()
        fd = -1 if self.sock is None else self.sock.fileno()
        if fd < 0:
            return True
        if sys.platform == "win32" or not hasattr(select, "poll"):
            return bool(select.select([fd], [], [], 0)[0])
        # poll, not select: select() fails on descriptors above FD_SETSIZE (1024)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    async def send(self, data: bytes, timeout_s: float | None = None) -> bool:
        """Whether ``data`` went out whole (False: the server had closed the connection).
        A connection that did not take the whole request is closed."""
        stream = self.stream
        try:
            if isinstance(stream, AsyncioStream):  # times itself, only when it waits
                await stream.send(data, timeout_s)
            elif timeout_s is None:
                await stream.send(data)
            else:
                with anyio.fail_after(timeout_s):
                    await stream.send(data)
        except STREAM_ERRORS:
            await self.close()
            return False
        except TimeoutError:
            await self.close()
            raise WriteTimedOut("the request could not be sent in time") from None
        except BaseException:
            await self.close()
            raise
        return True

    async def receive(self, timeout_s: float | None = None) -> bytes:
        """The next bytes of an answer (``b""`` at the end of the connection)."""
        stream = self.stream
        try:
            if isinstance(stream, AsyncioStream):  # times itself, only when it waits
                return await stream.receive(CHUNK, timeout_s)
            if timeout_s is None:
                return await stream.receive(CHUNK)
            with anyio.fail_after(timeout_s):
                return await stream.receive(CHUNK)
        except anyio.EndOfStream:
            return b""
        except TimeoutError:
            raise HttpTimeout("the server sent nothing within the read timeout") from None
        except STREAM_ERRORS as exc:
            raise ReadFailed(f"the connection failed: {type(exc).__name__}") from None

    async def close(self) -> None:
        # a broken connection closes as well as it can; a cancelled caller still closes it
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.stream.aclose()


async def connect(host: str, port: int, context: ssl.SSLContext | None,
                  timeout_s: float | None, options: SocketOptions = (), *,
                  loop_transport: bool = False) -> Conn:
    """A new connection to ``host:port``, TLS with ``context`` when given.

    ``loop_transport``: on asyncio, :mod:`._asyncio`'s stream (less CPU per request, but
    the idle check sees a close only once the loop has read it, so a connection the
    server closes right after answering may still be taken) instead of anyio's stream,
    whose idle check polls the socket itself.
    """
    try:
        with anyio.fail_after(timeout_s):
            if loop_transport and on_asyncio():
                conn = Conn(await asyncio_connect(host, port, context))
            else:
                stream: ByteStream = await anyio.connect_tcp(host, port)
                if context is not None:
                    stream = await _tls(stream, host, context)
                conn = Conn(stream)
    except TimeoutError:
        raise ConnectTimedOut("connect timed out") from None
    except (*STREAM_ERRORS, ssl.SSLError) as exc:
        raise ConnectFailed(f"cannot connect: {type(exc).__name__}: {exc}") from None
    if options:
        _set_options(conn, options)
    return conn


def _set_options(conn: Conn, options: SocketOptions) -> None:
    sock: Any = conn.stream.socket() if isinstance(conn.stream, AsyncioStream) else conn.sock
    if sock is None:
        return
    with contextlib.suppress(OSError):
        for level, option, value in options:
            sock.setsockopt(level, option, value)


async def _tls(stream: ByteStream, host: str, context: ssl.SSLContext) -> ByteStream:
    try:
        return await TLSStream.wrap(stream, hostname=host, ssl_context=context,
                                    standard_compatible=False)
    except BaseException:
        await Conn(stream).close()
        raise
