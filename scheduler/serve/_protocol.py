"""uvicorn's httptools protocol with a response's writes sent together (#21).

uvicorn writes a response's head when the app sends ``http.response.start`` and its
body when the app sends ``http.response.body``: two ``write`` system calls (and two TCP
segments, the client woken for each) for every JSON answer.  On loopback such a write
is among the dearest things serve does per call, since the kernel runs the receiver's
side of TCP in the writer's time.  Here a write waits for the one that follows it in
the same turn of the event loop, so a JSON answer is one write.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Gathered:
    """A transport whose write waits for the next one, or for the end of the loop turn,
    whichever comes first, and then goes out with it in one system call.

    A JSON answer's body (written right after its head) so sends both at once, without
    waiting for the turn to end; a write that nothing follows (a stream's head or part
    while the call waits) goes out at the end of the turn.  Everything but writing and
    closing is the transport's own (``__getattr__``): uvicorn reads addresses, pauses
    and resumes reading, and checks ``is_closing`` through it.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: bytes | None = None

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = data
            self._loop.call_soon(self._flush)
        else:
            self._pending = None
            self._transport.writelines((pending, data))  # one writev, nothing copied

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
        gathered: Any = _Gathered(transport, self.loop)
        super().connection_made(gathered)
