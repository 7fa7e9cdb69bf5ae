"""A lean keep-alive HTTP/1.1 client for serve's upstream hop (#21).

httpx's connection pool polls every pooled connection for readability on every
request and walks the pool again when a response closes; with a few hundred
keep-alive connections that was most of serve's CPU per call.  This client keeps a
LIFO list of idle connections and checks only the one it takes (one ``poll``), writes
a request in one send, and parses answers with httptools (llhttp, in C): Content-Length,
chunked and read-until-close bodies, handed over as they arrive.  On asyncio a
connection is :mod:`._http_asyncio`'s stream over the loop's own transport, on trio
anyio's; ``https`` upstreams get httpx's default TLS context (same trust store and
``SSL_CERT_FILE`` handling as httpx).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import anyio
import httptools
import httpx2 as httpx
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream

from scheduler.serve._http_asyncio import AsyncioStream, on_asyncio
from scheduler.serve._http_asyncio import connect as asyncio_connect

#: Idle connections are dropped after this long: below the 5 s keep-alive of common
#: servers (uvicorn, many proxies), so a request rarely meets one the server is closing.
IDLE_EXPIRY_S = 4.0
_MAX_IDLE = 256
_CHUNK = 65536
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class HttpError(Exception):
    """The exchange failed below HTTP: nothing usable came back."""


class ConnectFailed(HttpError):
    """No connection to the upstream (refused, unresolvable, TLS failure, timeout)."""


class HttpTimeout(HttpError):
    """The upstream sent nothing within the read timeout."""


class Disconnected(HttpError):
    """The connection ended, or the answer was not HTTP, before the response was whole."""


class _Conn:
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
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    async def close(self) -> None:
        # a broken connection closes as well as it can; a cancelled caller still closes it
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.stream.aclose()


class _Parsed:
    """httptools' callbacks: the status, headers and body parts of one response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head = self.done = self.extra = self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.done:  # bytes after the answer: the connection is not reusable
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # llhttp knows it only while the head is current (not once the message ended)
        self.keep_alive = self.parser.should_keep_alive()
        self.head = not 100 <= self.status < 200  # an interim answer: the real one follows
        if not self.head:
            self.headers = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = self.head

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise Disconnected(f"the upstream's answer is not HTTP/1.1: {exc}") from None

    def until_close(self) -> bool:
        """Whether the body is delimited by the connection closing (no length given)."""
        names = {k.lower() for k, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names


class Response:
    """An answer whose head arrived; the body is read with :meth:`chunks` or :meth:`read`,
    and :meth:`aclose` gives the connection back when the body was read whole."""

    def __init__(self, client: HttpClient, conn: _Conn, parsed: _Parsed) -> None:
        self._client, self._conn, self._p = client, conn, parsed
        self.status = parsed.status
        self.headers: dict[str, str] = {}
        for name, value in parsed.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    async def chunks(self) -> AsyncIterator[bytes]:
        p = self._p
        while True:
            if p.body:
                parts, p.body = p.body, []
                for part in parts:
                    yield part
            if p.done:
                return
            data = await self._client.receive(self._conn)
            if not data:
                if not p.until_close():
                    raise Disconnected("the upstream closed the connection mid-answer")
                p.done, p.extra = True, True  # the end of the body; the connection is spent
            else:
                p.feed(data)

    async def read(self) -> bytes:
        return b"".join([part async for part in self.chunks()])

    async def aclose(self) -> None:
        """The connection goes back to the pool only after a whole, reusable answer."""
        p, conn = self._p, self._conn
        if p.done and not p.extra and p.keep_alive:
            await self._client.release(conn)
        else:
            await conn.close()


class HttpClient:
    """Keep-alive HTTP/1.1 to one origin (``http`` or ``https``)."""

    def __init__(self, base_url: str, *, timeout_s: float, connect_s: float) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._tls else 80)
        self._prefix = url.path.rstrip("/")
        default = 443 if self._tls else 80
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if self._port == default else f"{host}:{self._port}"
        self._ssl: ssl.SSLContext | None = None
        if self._tls:
            self._ssl = httpx.create_ssl_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        self._timeout_s, self._connect_s = timeout_s, connect_s
        self._idle: list[_Conn] = []

    async def send(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                   body: bytes) -> Response:
        """Sends one request and returns once the answer's head arrived."""
        data = self._request(method, target, headers, body)
        conn, reused = await self._take()
        try:
            with anyio.fail_after(self._timeout_s):
                try:
                    await conn.stream.send(data)
                except _STREAM_ERRORS:
                    await conn.close()
                    if not reused:
                        raise Disconnected("the upstream closed the connection") from None
                    # the server closed this idle connection before it could take the whole
                    # request, so it cannot have acted on it: sent once more, on a new one
                    conn = await self._connect()
                    try:
                        await conn.stream.send(data)
                    except _STREAM_ERRORS:
                        raise Disconnected("the upstream closed the connection") from None
                parsed = _Parsed()
                while not parsed.head:
                    chunk = await self._receive(conn)
                    if not chunk:
                        raise Disconnected("the upstream closed the connection without an answer")
                    parsed.feed(chunk)
        except TimeoutError:
            await conn.close()
            raise HttpTimeout("the upstream did not answer in time") from None
        except BaseException:
            await conn.close()
            raise
        return Response(self, conn, parsed)

    async def receive(self, conn: _Conn) -> bytes:
        """The next bytes of an answer (``b""`` at the end of the connection)."""
        try:
            with anyio.fail_after(self._timeout_s):
                return await self._receive(conn)
        except TimeoutError:
            raise HttpTimeout("the upstream stopped sending within the read timeout") from None

    async def release(self, conn: _Conn) -> None:
        if len(self._idle) >= _MAX_IDLE:
            await conn.close()
            return
        conn.idle_since = anyio.current_time()
        self._idle.append(conn)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def _receive(self, conn: _Conn) -> bytes:
        try:
            return await conn.stream.receive(_CHUNK)
        except anyio.EndOfStream:
            return b""
        except _STREAM_ERRORS as exc:
            raise Disconnected(f"the upstream connection failed: {type(exc).__name__}") from None

    async def _take(self) -> tuple[_Conn, bool]:
        """The most recently used idle connection that is still good, or a new one."""
        if self._idle:
            now = anyio.current_time()
            while self._idle:
                conn = self._idle.pop()
                if now - conn.idle_since < IDLE_EXPIRY_S and not conn.readable():
                    return conn, True
                await conn.close()
        return await self._connect(), False

    async def _connect(self) -> _Conn:
        try:
            with anyio.fail_after(self._connect_s):
                if on_asyncio():
                    return _Conn(await asyncio_connect(self._host, self._port, self._ssl))
                stream: ByteStream = await anyio.connect_tcp(self._host, self._port)
                if self._ssl is not None:
                    stream = await _tls(stream, self._host, self._ssl)
        except TimeoutError:
            raise ConnectFailed("connect timed out") from None
        except (*_STREAM_ERRORS, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect: {type(exc).__name__}: {exc}") from None
        return _Conn(stream)

    def _request(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                 body: bytes) -> bytes:
        lines = [f"{method} {self._prefix}{target} HTTP/1.1", f"host: {self._host_header}",
                 *(f"{k}: {v}" for k, v in headers), f"content-length: {len(body)}", "", ""]
        head = "\r\n".join(lines)
        # a line break in a relayed header or query would smuggle a header or a request
        if head.count("\n") != len(lines) - 1 or "\r" in head.replace("\r\n", "") \
                or "\0" in head or target.count(" "):
            raise ValueError("a header or the request target holds a line break, NUL or space")
        return head.encode("latin-1") + body


async def _tls(stream: ByteStream, host: str, context: ssl.SSLContext) -> ByteStream:
    try:
        return await TLSStream.wrap(stream, hostname=host, ssl_context=context,
                                    standard_compatible=False)
    except BaseException:
        await _Conn(stream).close()
        raise
