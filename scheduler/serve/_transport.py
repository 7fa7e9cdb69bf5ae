"""In-process HTTP transports to the serve app, for the governed drop-in client (#21).

httpx's own ``ASGITransport`` gathers a whole response before it returns it, so a
streamed answer would reach the SDK only at its end, and a held request's keep-alive
pings never.  :class:`AppTransport` runs each request's ASGI call as a task of the
client's task group and hands the body over as the app sends it.  :class:`PortalTransport`
makes it synchronous for ``anthropic.Anthropic``: every step is one call through an
anyio blocking portal into the event loop thread where the run lives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import anyio
import httpx2 as httpx
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp

_Message = MutableMapping[str, Any]
#: What the app task hands the response: an ASGI message, or the error that ended it.
_Item = _Message | BaseException


class AppBody(httpx.AsyncByteStream):
    """A response body as the app sends it; closing it early leaves the app running
    (the governed call still settles what the upstream answered), its output dropped."""

    def __init__(self, rx: MemoryObjectReceiveStream[_Item], gone: anyio.Event) -> None:
        self._rx, self._gone = rx, gone

    async def next_chunk(self) -> bytes | None:
        """The next body bytes, or None at the end (an app failure raises ``ReadError``)."""
        async for item in self._rx:
            if isinstance(item, BaseException):
                raise httpx.ReadError(f"vibe-engine: {type(item).__name__}: {item}") from item
            body = bytes(item.get("body", b""))
            if body:
                return body
            if not item.get("more_body", False):
                break
        return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self._gone.set()  # the app's receive() now says http.disconnect
        self._rx.close()


class AppTransport(httpx.AsyncBaseTransport):
    """Sends requests to an ASGI app in this event loop, streaming the answers back."""

    def __init__(self, app: ASGIApp, task_group: TaskGroup) -> None:
        self._app, self._tg = app, task_group

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()  # Messages API requests are single JSON documents
        tx, rx = anyio.create_memory_object_stream[_Item](math.inf)
        gone = anyio.Event()
        self._tg.start_soon(self._call, _scope(request), body, tx, gone)
        # the SDK's read timeout bounds the wait for an answer, as it does over HTTP
        read = (request.extensions.get("timeout") or {}).get("read")
        try:
            with anyio.fail_after(read if isinstance(read, int | float) else None):
                start = await rx.receive()
        except BaseException as exc:  # the caller gave up: the app sees the client leave
            gone.set()
            rx.close()
            if isinstance(exc, TimeoutError):
                raise httpx.ReadTimeout("vibe-engine: no answer within the read timeout",
                                        request=request) from None
            raise
        if isinstance(start, BaseException):
            rx.close()
            raise httpx.ConnectError(f"vibe-engine: {type(start).__name__}: {start}") from start
        headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
        return httpx.Response(int(start["status"]), headers=headers,
                              stream=AppBody(rx, gone), request=request)

    async def _call(self, scope: dict[str, Any], body: bytes,
                    tx: MemoryObjectSendStream[_Item], gone: anyio.Event) -> None:
        sent = False

        async def receive() -> _Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: _Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                gone.set()  # as ASGI has it: receive() says http.disconnect once answered
            # a closed response drops the rest: the call goes on and settles
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                tx.send_nowait(message)

        with tx:
            try:
                await self._app(scope, receive, send)
            except Exception as exc:  # fails this request only; the run goes on
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    tx.send_nowait(exc)


def _scope(request: httpx.Request) -> dict[str, Any]:
    url = request.url
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": request.method, "scheme": url.scheme, "path": url.path,
        "raw_path": url.raw_path.split(b"?")[0], "query_string": url.query,
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
        "server": (url.host, url.port or 80), "client": ("127.0.0.1", 0), "root_path": "",
    }


class _PortalBody(httpx.SyncByteStream):
    def __init__(self, portal: BlockingPortal, body: AppBody) -> None:
        self._portal, self._body = portal, body

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self._portal.call(self._body.next_chunk)) is not None:
            yield chunk

    def close(self) -> None:
        self._portal.call(self._body.aclose)


class PortalTransport(httpx.BaseTransport):
    """A synchronous transport over :class:`AppTransport` in a portal's event loop."""

    def __init__(self, portal: BlockingPortal, inner: AppTransport) -> None:
        self._portal, self._inner = portal, inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = httpx.Request(request.method, request.url, headers=request.headers,
                              content=request.read(), extensions=request.extensions)
        resp = self._portal.call(self._inner.handle_async_request, inner)
        assert isinstance(resp.stream, AppBody)
        return httpx.Response(resp.status_code, headers=resp.headers.raw,
                              stream=_PortalBody(self._portal, resp.stream), request=request)
