"""serve's upstream hop (#21): keep-alive HTTP/1.1 to one origin on :mod:`scheduler.net`.

httpx's pool probes every pooled connection on each request; this client takes the most
recent idle connection (checking only it), writes a request in one send and parses the
answer with httptools.  On asyncio its connections ride the loop's own transport
(``loop_transport``: the cheaper path per call); ``https`` upstreams get httpx's default
TLS context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

from scheduler.net import (
    Conn,
    IdlePool,
    Parsed,
    body_chunks,
    connect,
    default_ssl_context,
    end_head,
    read_head,
)

_MAX_IDLE = 256
_ORIGIN = None  # the pool's one key: this client has one origin
#: Request heads kept, by method, target and headers (a client sends few distinct ones).
_MAX_HEADS = 256


class Response:
    """An answer whose head arrived; the body is read with :meth:`chunks` or :meth:`read`,
    and :meth:`aclose` gives the connection back when the body was read whole."""

    def __init__(self, client: HttpClient, conn: Conn, parsed: Parsed) -> None:
        self._client, self._conn, self._p = client, conn, parsed
        self.status = parsed.status
        raw = parsed.headers
        self.headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in raw}
        if len(self.headers) < len(raw):  # a repeated name: its values joined, in order
            self.headers = _joined(raw)

    def chunks(self) -> AsyncIterator[bytes]:
        return body_chunks(self._conn, self._p, self._client.timeout_s)

    async def read(self) -> bytes:
        p = self._p
        if p.done:  # the whole answer came with its head (a small JSON answer)
            parts, p.body = p.body, []
            return b"".join(parts)
        return b"".join([part async for part in self.chunks()])

    async def aclose(self) -> None:
        """The connection goes back to the pool only after a whole, reusable answer."""
        if self._p.reusable:
            await self._client.pool.put(_ORIGIN, self._conn)
        else:
            await self._conn.close()


def _joined(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


class HttpClient:
    """Keep-alive HTTP/1.1 to one origin (``http`` or ``https``)."""

    def __init__(self, base_url: str, *, timeout_s: float, connect_s: float) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if tls else 80)
        self._prefix = url.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        default = 443 if tls else 80
        self._host_line = f"host: {host if self._port == default else f'{host}:{self._port}'}"
        self._ssl = default_ssl_context() if tls else None
        self.timeout_s, self._connect_s = timeout_s, connect_s
        self.pool: IdlePool[None] = IdlePool(_MAX_IDLE)
        #: A request's head up to its length, checked once: built and checked per
        #: request, it cost more than the rest of sending it.
        self._heads: dict[tuple[str, str, Sequence[tuple[str, str]]], bytes] = {}

    async def send(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                   body: bytes) -> Response:
        """Sends one request and returns once the answer's head arrived."""
        data = self._request(method, target, headers, body)
        conn: Conn | None = None
        try:  # the timeout bounds the sending and each read of the head
            conn = await self.pool.send(_ORIGIN, self._connect, data, self.timeout_s)
            parsed = await read_head(conn, self.timeout_s)
        except BaseException:
            if conn is not None:
                await conn.close()
            raise
        return Response(self, conn, parsed)

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def _connect(self) -> Conn:
        return await connect(self._host, self._port, self._ssl, self._connect_s,
                             loop_transport=True)

    def _request(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                 body: bytes) -> bytes:
        key = (method, target, headers if isinstance(headers, tuple) else tuple(headers))
        head = self._heads.get(key)
        if head is None:
            head = self._head(method, target, headers)
            if len(self._heads) >= _MAX_HEADS:
                self._heads.clear()
            self._heads[key] = head
        return b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body)

    def _head(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
        """The request line and headers, each line ended, checked for smuggled lines."""
        lines = [f"{method} {self._prefix}{target} HTTP/1.1", self._host_line]
        lines += [f"{k}: {v}" for k, v in headers]
        checked = end_head("\r\n".join(lines).encode("latin-1"), len(lines))
        return checked[:-2]  # the blank line comes after the length
