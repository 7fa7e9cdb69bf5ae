"""A lean keep-alive HTTP/1.1 transport under the ``anthropic`` SDK's httpx client (#22).

httpcore's pool walks every pooled connection on each request and again when a
response closes, probing each idle one's socket (``has_expired`` → ``is_readable``):
with 64 concurrent agents that walk cost more CPU than the rest of a call.  This
transport is the httpx face of :mod:`scheduler.net` (per-origin idle pools that check
only the connection taken, one send per request, httptools parsing).  It sits below the
SDK (``http_client=`` an httpx client with this transport), so requests, retries,
errors and responses stay the SDK's own: failures are raised as httpx's exceptions
(``ConnectError``, ``ReadTimeout``, …), which the SDK turns into ``APIConnectionError``
/ ``APITimeoutError`` as before.

Limits follow the SDK's defaults: at most ``max_connections`` requests in flight
(a request waits for a slot up to the pool timeout) and ``max_idle`` connections kept.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator

import anyio
import httpx2 as httpx

from scheduler import net

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
#: :mod:`scheduler.net`'s failures as the httpx exceptions the SDK classifies.
_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    net.ConnectFailed: httpx.ConnectError,
    net.ConnectTimedOut: httpx.ConnectTimeout,
    net.HttpTimeout: httpx.ReadTimeout,
    net.WriteTimedOut: httpx.WriteTimeout,
    net.WriteFailed: httpx.WriteError,
    net.ReadFailed: httpx.ReadError,
    net.Disconnected: httpx.RemoteProtocolError,
    net.UnsafeHead: httpx.LocalProtocolError,
}


def _httpx_error(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    return _HTTPX_ERRORS.get(type(exc), httpx.TransportError)(str(exc), request=request)


class _Body(httpx.AsyncByteStream):
    """A response's body as it arrives; closing it gives the connection back when the
    body was read whole, and frees the request's slot."""

    def __init__(self, transport: KeepAliveTransport, origin: _Origin, conn: net.Conn,
                 parsed: net.Parsed, request: httpx.Request, read_s: float | None) -> None:
        self._transport, self._origin, self._conn, self._p = transport, origin, conn, parsed
        self._request, self._read_s = request, read_s
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in net.body_chunks(self._conn, self._p, self._read_s):
                yield part
        except net.HttpError as exc:
            raise _httpx_error(exc, self._request) from None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._transport.finished(self._origin, self._conn, self._p.reusable)


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 to any number of ``http``/``https`` origins."""

    def __init__(self, *, max_connections: int = 1000, max_idle: int = 100,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._slots = anyio.Semaphore(max_connections, fast_acquire=True)
        self._pool: net.IdlePool[_Origin] = net.IdlePool(max_idle)
        self._ssl = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        try:
            data = _serialize(request, await _body(request))
        except net.UnsafeHead as exc:
            raise _httpx_error(exc, request) from None
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
            stream=_Body(self, origin, conn, parsed, request, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": parsed.reason},
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def finished(self, origin: _Origin, conn: net.Conn, reusable: bool) -> None:
        """A response ended: its connection kept for the next request or closed."""
        self._slots.release()
        if reusable:
            await self._pool.put(origin, conn)
        else:
            await conn.close()

    async def _exchange(self, request: httpx.Request, origin: _Origin, data: bytes,
                        timeouts: dict[str, float | None]) -> tuple[net.Conn, net.Parsed]:
        scheme, host, port = origin
        context = self._ssl_context() if scheme == "https" else None
        connect_s = timeouts.get("connect")

        async def connect() -> net.Conn:
            return await net.connect(host, port, context, connect_s, _SOCKET_OPTIONS)

        try:
            conn = await self._pool.send(origin, connect, data, timeouts.get("write"))
        except net.HttpError as exc:
            raise _httpx_error(exc, request) from None
        try:
            parsed = await net.read_head(conn, timeouts.get("read"))
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, net.HttpError):
                raise _httpx_error(exc, request) from None
            raise
        if request.method == "HEAD":
            # no body follows, whatever the head announces; the parser would wait for
            # one (or took what followed for it), so the connection is not reused
            parsed.body, parsed.done, parsed.extra = [], True, True
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

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = net.default_ssl_context()
        return self._ssl


async def _body(request: httpx.Request) -> bytes:
    try:
        return request.content
    except httpx.RequestNotRead:
        return await request.aread()


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    """The request line, headers and body in one buffer; the body's length stated."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines.extend(name + b": " + value for name, value in request.headers.raw
                 if name.lower() not in (b"content-length", b"transfer-encoding"))
    if body or request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(b"Content-Length: %d" % len(body))
    return net.end_head(b"\r\n".join(lines), len(lines)) + body
