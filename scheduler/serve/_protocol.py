"""uvicorn's httptools protocol with a response's writes sent together (#21).

uvicorn writes a response's head when the app sends ``http.response.start`` and its
body when the app sends ``http.response.body``: two ``write`` system calls (and two TCP
segments, the client woken for each) for every JSON answer.  On loopback such a write
is among the dearest things serve does per call, since the kernel runs the receiver's
side of TCP in the writer's time.  Here a response's head waits for the write that
follows it in the same turn of the event loop, so a JSON answer is one write.

uvicorn also waits without end for a request that never arrives whole (a head or body
sent a byte at a time, a client gone without closing): each such connection would hold
its socket and buffers for good.  Here a request has ``serve.request_timeout_s`` from
its first byte (a connection's opening, for its first) to its last; one that takes
longer gets a 408 and its connection is closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Gathered:
    """A transport that holds a response's head until the response's next write, or the
    end of the loop turn, whichever comes first, and sends them in one system call.

    A JSON answer's body (written right after its head) so goes out with it at once; a
    stream's head goes out with its first event, or alone at the end of the turn while
    the call waits.  Every other write goes out as it comes: a stream's events are never
    held.  Everything but writing and closing is the transport's own (``__getattr__``):
    uvicorn reads addresses and pauses and resumes reading through it.
    """

    __slots__ = ("_hold", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: bytes | None = None
        self._hold = False

    def hold_next(self) -> None:
        """The next write is a response's head: hold it."""
        self._hold = True

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._transport.writelines((pending, data))  # one writev, nothing copied
        elif self._hold:
            self._hold = False
            self._pending = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self._transport.is_closing():
            self._transport.write(pending)

    def is_closing(self) -> bool:  # uvicorn asks after every response
        return self._transport.is_closing()

    def close(self) -> None:
        """What was written goes out before the connection closes."""
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatheredWritesProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol over :class:`_Gathered` writes, each request
    given :attr:`request_timeout_s` to arrive whole."""

    #: Seconds from a request's first byte until its last (``serve.request_timeout_s``).
    request_timeout_s: float = 120.0
    _timer: asyncio.TimerHandle | None = None
    _begun = False  # a request's first byte arrived, its last not yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._gathered = _Gathered(transport, self.loop)
        gathered: Any = self._gathered  # a transport by its methods
        super().connection_made(gathered)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # bytes between requests that begin none (blank lines) cancel uvicorn's
        # keep-alive close: the wait for the next request is bounded here instead
        if self._timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        # a request begins: the first write after it is its response's head (a
        # pipelined request's may come later; holding another write only delays it)
        super().on_message_begin()
        self._gathered.hold_next()
        self._begun = True
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()  # the request is whole: answering it may take as long as it takes
        self._begun = False
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request HTTP itself refuses (a bad length, a control character in a header)
        gets the API's error shape, as every other refusal does, then the close."""
        self._disarm()
        self.transport.write(_error_response(  # uvicorn's msg is always the same one
            400, "Bad Request", "request: not valid HTTP/1.1 (its head, length or chunks)"))
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.request_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        """The request did not arrive whole in time: a 408 unless none began (an idle
        connection) or its answer already started (a 401 sent before the body was read),
        then the connection closes; an app still reading the body sees the client gone
        and answers nothing."""
        self._timer = None
        if self.transport.is_closing():
            return
        if self._begun and (self.cycle is None or not self.cycle.response_started):
            self.transport.write(_error_response(
                408, "Request Timeout", f"request: not received whole within "
                f"serve.request_timeout_s = {self.request_timeout_s:g} s"))
        self.transport.close()


def _error_response(status: int, reason: str, message: str) -> bytes:
    """A whole ``invalid_request_error`` response that closes its connection."""
    body = json.dumps({"type": "error", "error": {
        "type": "invalid_request_error", "message": message}}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason.encode(), len(body), body))


def protocol_class(request_timeout_s: float) -> type[GatheredWritesProtocol]:
    """:class:`GatheredWritesProtocol` giving each request ``request_timeout_s``."""
    return type("GatheredWritesProtocol", (GatheredWritesProtocol,),
                {"request_timeout_s": request_timeout_s})
