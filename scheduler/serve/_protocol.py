"""uvicorn's httptools protocol with a response's writes sent together (#21).

uvicorn writes a response's head when the app sends ``http.response.start`` and its
body when the app sends ``http.response.body``: two ``write`` system calls (and two TCP
segments, the client woken for each) for every JSON answer.  On loopback such a write
is among the dearest things serve does per call, since the kernel runs the receiver's
side of TCP in the writer's time.  Here a response's head waits for the write that
follows it in the same turn of the event loop, so a JSON answer is one write.
"""

from __future__ import annotations

import asyncio
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
    """uvicorn's ``httptools`` protocol over :class:`_Gathered` writes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._gathered = _Gathered(transport, self.loop)
        gathered: Any = self._gathered  # a transport by its methods
        super().connection_made(gathered)

    def on_message_begin(self) -> None:
        # a request begins: the first write after it is its response's head (a
        # pipelined request's may come later; holding another write only delays it)
        super().on_message_begin()
        self._gathered.hold_next()
