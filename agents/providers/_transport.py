"""A lean keep-alive HTTP/1.1 transport under the ``anthropic`` SDK's httpx client (#22).

httpcore's pool walks every pooled connection on each request and again when a
response closes, probing each idle one's socket (``has_expired`` → ``is_readable``):
with 64 concurrent agents that walk cost more CPU than the rest of a call.  This
transport keeps a LIFO list of idle connections per origin and checks only the one
it takes (one ``poll``), writes a request in one send and parses answers with
httptools (llhttp, in C).  It sits below the SDK (``http_client=`` an httpx client
with this transport), so requests, retries, errors and responses stay the SDK's own:
failures are raised as httpx's exceptions (``ConnectError``, ``ReadTimeout``, …),
which the SDK turns into ``APIConnectionError`` / ``APITimeoutError`` as before.

Limits follow the SDK's defaults: at most ``max_connections`` requests in flight
(a request waits for a slot up to the pool timeout) and ``max_idle`` connections kept.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httptools
import httpx2 as httpx
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream

#: Idle connections are dropped after this long: below the 5 s keep-alive of common
#: servers (uvicorn, many proxies), so a request rarely meets one the server is closing.
IDLE_EXPIRY_S = 4.0
_CHUNK = 65536
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_Origin = tuple[str, str, int]
#: The SDK's own socket options (keep-alive probes after 60 s idle), so a long call on
#: a silently dropped connection fails instead of waiting for the read timeout.
_SOCKET_OPTIONS = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)] + [
    (socket.IPPROTO_TCP, opt, value)
    for opt, value in ((getattr(socket, "TCP_KEEPINTVL", None), 60),
                       (getattr(socket, "TCP_KEEPCNT", None), 5),
                       (getattr(socket, "TCP_KEEPIDLE", None), 60))
    if opt is not None
]


class _Conn:
    """One connection, with its socket kept for the idle liveness check."""

    __slots__ = ("idle_since", "sock", "stream")

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.sock: socket.socket | None = stream.extra(SocketAttribute.raw_socket, None)
        self.idle_since = 0.0

    def readable(self) -> bool:
        """An idle connection with something to read was closed by the server (or sent
        what nobody asked for): either way it cannot carry a request."""
        fd = -1 if self.sock is None else self.sock.fileno()
        if fd < 0:
            return True
        if not hasattr(select, "poll"):  # Windows; select() there takes any socket
            return bool(select.select([fd], [], [], 0)[0])
        # poll, not select: select() fails on descriptors above FD_SETSIZE (1024)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    async def close(self) -> None:
        # a broken connection closes as well as it can; a cancelled caller still closes it
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.stream.aclose()


class _Parsed:
    """httptools' callbacks: the status, headers and body parts of one response."""

    def __init__(self, request: httpx.Request) -> None:
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head = self.done = self.extra = self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.done:  # bytes after the answer: the connection is not reusable
            self.extra = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # llhttp knows it only while the head is current (not once the message ended)
        self.keep_alive = self.parser.should_keep_alive()
        self.head = not 100 <= self.status < 200  # an interim answer: the real one follows
        if not self.head:
            self.headers, self.reason = [], b""

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = self.head

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise httpx.RemoteProtocolError(f"the answer is not HTTP/1.1: {exc}",
                                            request=self.request) from None

    def until_close(self) -> bool:
        """Whether the body is delimited by the connection closing (no length given)."""
        names = {k.lower() for k, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names


class _Body(httpx.AsyncByteStream):
    """A response's body as it arrives; closing it gives the connection back when the
    body was read whole, and frees the request's slot."""

    def __init__(self, transport: KeepAliveTransport, origin: _Origin, conn: _Conn,
                 parsed: _Parsed, read_s: float | None) -> None:
        self._transport, self._origin, self._conn, self._p = transport, origin, conn, parsed
        self._read_s = read_s
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        p = self._p
        while True:
            if p.body:
                parts, p.body = p.body, []
                for part in parts:
                    yield part
            if p.done:
                return
            data = await self._transport.receive(self._conn, p.request, self._read_s)
            if data:
                p.feed(data)
            elif p.until_close():
                p.done = p.extra = True  # the end of the body; the connection is spent
            else:
                raise httpx.RemoteProtocolError("the server closed the connection mid-answer",
                                                request=p.request)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        p = self._p
        reusable = p.done and not p.extra and p.keep_alive
        await self._transport.finished(self._origin, self._conn, reusable)


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 to any number of ``http``/``https`` origins."""

    def __init__(self, *, max_connections: int = 1000, max_idle: int = 100,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._slots = anyio.Semaphore(max_connections, fast_acquire=True)
        self._max_idle = max_idle
        self._idle: dict[_Origin, list[_Conn]] = {}
        self._idle_count = 0
        self._ssl = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        data = _serialize(request, await _body(request))
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        await self._acquire(request, timeouts.get("pool"))
        try:
            conn, parsed = await self._exchange(request, origin, data, timeouts)
        except BaseException:
            self._slots.release()
            raise
        return httpx.Response(
            parsed.status, headers=parsed.headers,
            stream=_Body(self, origin, conn, parsed, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": parsed.reason},
        )

    async def aclose(self) -> None:
        idle, self._idle, self._idle_count = self._idle, {}, 0
        for conns in idle.values():
            for conn in conns:
                await conn.close()

    # the request's parts ------------------------------------------------------------
    async def _exchange(self, request: httpx.Request, origin: _Origin, data: bytes,
                        timeouts: dict[str, float | None]) -> tuple[_Conn, _Parsed]:
        conn, reused = await self._take(request, origin, timeouts.get("connect"))
        try:
            if not await self._send(request, conn, data, timeouts.get("write")):
                await conn.close()
                if not reused:
                    raise httpx.WriteError("the server closed the connection", request=request)
                # the server closed this idle connection before it took the whole request,
                # so it cannot have acted on it: sent once more, on a new connection
                conn = await self._connect(request, origin, timeouts.get("connect"))
                if not await self._send(request, conn, data, timeouts.get("write")):
                    raise httpx.WriteError("the server closed the connection", request=request)
            parsed = _Parsed(request)
            read_s = timeouts.get("read")
            while not parsed.head:
                chunk = await self.receive(conn, request, read_s)
                if not chunk:
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without an answer", request=request)
                parsed.feed(chunk)
            if request.method == "HEAD":
                # no body follows, whatever the head announces; the parser would wait for
                # one (or took what followed for it), so the connection is not reused
                parsed.body, parsed.done, parsed.extra = [], True, True
        except BaseException:
            await conn.close()
            raise
        return conn, parsed

    async def _acquire(self, request: httpx.Request, pool_s: float | None) -> None:
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(pool_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection slot in time",
                                        request=request) from None

    async def _take(self, request: httpx.Request, origin: _Origin,
                    connect_s: float | None) -> tuple[_Conn, bool]:
        """The most recently used idle connection that is still good, or a new one."""
        idle = self._idle.get(origin)
        if idle:
            now = anyio.current_time()
            while idle:
                conn = idle.pop()
                self._idle_count -= 1
                if now - conn.idle_since < IDLE_EXPIRY_S and not conn.readable():
                    return conn, True
                await conn.close()
        return await self._connect(request, origin, connect_s), False

    async def _connect(self, request: httpx.Request, origin: _Origin,
                       connect_s: float | None) -> _Conn:
        scheme, host, port = origin
        try:
            with anyio.fail_after(connect_s):
                stream: ByteStream = await anyio.connect_tcp(host, port)
                _set_socket_options(stream)
                if scheme == "https":
                    stream = await _tls(stream, host, self._ssl_context())
        except TimeoutError:
            raise httpx.ConnectTimeout("connect timed out", request=request) from None
        except (*_STREAM_ERRORS, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect: {type(exc).__name__}: {exc}",
                                     request=request) from None
        return _Conn(stream)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # httpx's default context: the same trust store and SSL_CERT_FILE handling
            self._ssl = httpx.create_ssl_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    @staticmethod
    async def _send(request: httpx.Request, conn: _Conn, data: bytes,
                    write_s: float | None) -> bool:
        """Whether the request went out whole (False: the connection was closed)."""
        try:
            with anyio.fail_after(write_s):
                await conn.stream.send(data)
        except TimeoutError:
            raise httpx.WriteTimeout("the request could not be sent in time",
                                     request=request) from None
        except _STREAM_ERRORS:
            return False
        return True

    async def receive(self, conn: _Conn, request: httpx.Request, read_s: float | None) -> bytes:
        """The next bytes of an answer (``b""`` at the end of the connection)."""
        try:
            with anyio.fail_after(read_s):
                return await conn.stream.receive(_CHUNK)
        except anyio.EndOfStream:
            return b""
        except TimeoutError:
            raise httpx.ReadTimeout("the server sent nothing within the read timeout",
                                    request=request) from None
        except _STREAM_ERRORS as exc:
            raise httpx.ReadError(f"the connection failed: {type(exc).__name__}",
                                  request=request) from None

    async def finished(self, origin: _Origin, conn: _Conn, reusable: bool) -> None:
        """A response ended: its connection kept for the next request or closed."""
        self._slots.release()
        if not reusable or self._idle_count >= self._max_idle:
            await conn.close()
            return
        conn.idle_since = anyio.current_time()
        self._idle.setdefault(origin, []).append(conn)
        self._idle_count += 1


async def _body(request: httpx.Request) -> bytes:
    try:
        return request.content
    except httpx.RequestNotRead:
        return await request.aread()


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    """The request line, headers and body in one buffer; the body's length stated."""
    url = request.url
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), url.raw_path)]
    lines.extend(name + b": " + value for name, value in request.headers.raw
                 if name.lower() not in (b"content-length", b"transfer-encoding"))
    if body or request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(b"Content-Length: %d" % len(body))
    head = b"\r\n".join(lines)
    # a line break in a header or the target would smuggle a header or a request
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1 \
            or b"\0" in head or lines[0].count(b" ") != 2:
        raise httpx.LocalProtocolError("a header or the target holds a line break or NUL",
                                       request=request)
    return head + b"\r\n\r\n" + body


def _set_socket_options(stream: ByteStream) -> None:
    sock: Any = stream.extra(SocketAttribute.raw_socket, None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        for level, option, value in _SOCKET_OPTIONS:
            sock.setsockopt(level, option, value)


async def _tls(stream: ByteStream, host: str, context: ssl.SSLContext) -> ByteStream:
    try:
        return await TLSStream.wrap(stream, hostname=host, ssl_context=context,
                                    standard_compatible=False)
    except BaseException:
        await _Conn(stream).close()
        raise
