"""A client connection on asyncio's own transport, for :mod:`._conn`.

anyio's socket stream turns reading on and off around every ``receive`` (two
``epoll_ctl`` calls on uvloop) and passes a checkpoint on every ``send``; on serve's
upstream hop that was a good part of the client's CPU per call.  Here the protocol reads all
the time into a small buffer (reading pauses above 256 KiB until the consumer takes
it), ``send`` writes at once, and whether an idle connection is still good is known
without a ``poll``: the server closing it, or sending anything, shows in the buffer.
Only the asyncio backend gets it; trio keeps anyio's stream.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio

_HIGH = 256 * 1024  # reading pauses above this much unread, resumes below _LOW
_LOW = 64 * 1024


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but have the same methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer.append(data)
        self.size += len(data)
        if self.size > _HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self.drained is None or self.drained.done():  # a cancelled sender's is done
            self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class AsyncioStream:
    """A connected socket (TLS or not) as the byte stream :mod:`._conn` reads and writes."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport, self._p = transport, protocol

    def stale(self) -> bool:
        """An idle connection that was closed, or got bytes nobody asked for."""
        return bool(self._p.buffer) or self._p.eof or self._transport.is_closing()

    def socket(self) -> Any:
        """The socket underneath (asyncio's or uvloop's stand-in), for socket options."""
        return self._transport.get_extra_info("socket")

    async def send(self, data: bytes, timeout_s: float | None = None) -> None:
        """Writes ``data``; waits (at most ``timeout_s``: ``TimeoutError``) only while
        the kernel's buffer is full."""
        if self._p.eof or self._transport.is_closing():
            raise anyio.BrokenResourceError
        self._transport.write(data)
        drained = self._p.drained
        if drained is not None and not drained.done():  # the kernel's buffer is full
            with anyio.fail_after(timeout_s):
                await drained
            if self._p.eof:
                raise anyio.BrokenResourceError

    async def receive(self, max_bytes: int = 65536, timeout_s: float | None = None) -> bytes:
        """The next bytes; ``TimeoutError`` when none came within ``timeout_s``.  The
        timeout is a loop timer armed only while waiting, so bytes already read cost
        nothing for it (anyio's ``fail_after`` around each read would cost a cancel
        scope's entry and exit, a good part of the hop's CPU)."""
        p = self._p
        while not p.buffer:
            if p.eof:
                if p.error is not None:
                    raise anyio.BrokenResourceError from p.error
                raise anyio.EndOfStream
            loop = asyncio.get_running_loop()
            p.waiter = waiter = loop.create_future()
            timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, waiter)
            try:
                await waiter
            finally:
                p.waiter = None
                if timer is not None:
                    timer.cancel()
        chunk = p.buffer.popleft()
        if len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            p.buffer.appendleft(rest)
        p.size -= len(chunk)
        if p.paused and p.size < _LOW:
            p.paused = False
            self._transport.resume_reading()
        return chunk

    async def aclose(self) -> None:
        self._transport.close()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None on trio, whose sockets serve any later run."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def at_loop_end(loop: asyncio.AbstractEventLoop,
                cleanup: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """Await ``cleanup()`` when ``loop`` shuts down: ``asyncio.run`` (and so ``anyio.run``)
    cancels the tasks still pending, and this one's ``finally`` runs while the loop can
    still close its transports (a closed loop cannot)."""

    async def wait() -> None:
        try:
            await loop.create_future()
        finally:
            await cleanup()

    return loop.create_task(wait())


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def connect(host: str, port: int, context: ssl.SSLContext | None) -> AsyncioStream:
    """A connection to ``host:port`` (TLS with ``context``); raises ``OSError``."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        _Protocol, host, port, ssl=context, server_hostname=host if context else None)
    return AsyncioStream(transport, protocol)
