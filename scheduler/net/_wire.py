"""HTTP/1.1 on the wire: a request's head, and a response parsed by httptools (llhttp,
in C) with Content-Length, chunked and read-until-close bodies handed over as they arrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httptools

from scheduler.net._conn import Conn
from scheduler.net._errors import Disconnected, UnsafeHead


def end_head(head: bytes, lines: int) -> bytes:
    """``head`` (the request line and ``lines - 1`` header lines joined by CRLF) ended
    by its blank line, once it is known to hold no other line break."""
    # a line break in a relayed header or the target would smuggle a header or a request
    if head.count(b"\n") != lines - 1 or head.count(b"\r") != lines - 1 or b"\0" in head \
            or head.partition(b"\r\n")[0].count(b" ") != 2:
        raise UnsafeHead("a header or the request target holds a line break, NUL or space")
    return head + b"\r\n\r\n"


class Parsed:
    """httptools' callbacks: the status, headers and body parts of one response."""

    def __init__(self) -> None:
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

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request: the answer was read whole,
        nothing followed it and the server keeps the connection alive."""
        return self.done and not self.extra and self.keep_alive

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise Disconnected(f"the server's answer is not HTTP/1.1: {exc}") from None

    def until_close(self) -> bool:
        """Whether the body is delimited by the connection closing (no length given)."""
        names = {k.lower() for k, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names


async def read_head(conn: Conn, timeout_s: float | None = None) -> Parsed:
    """The answer on ``conn`` once its (final) head arrived; ``timeout_s`` bounds each read."""
    parsed = Parsed()
    while not parsed.head:
        data = await conn.receive(timeout_s)
        if not data:
            raise Disconnected("the server closed the connection without an answer")
        parsed.feed(data)
    return parsed


async def body_chunks(conn: Conn, parsed: Parsed,
                      timeout_s: float | None) -> AsyncIterator[bytes]:
    """The body's parts as they arrive; ``timeout_s`` bounds each read."""
    while True:
        if parsed.body:
            parts, parsed.body = parsed.body, []
            for part in parts:
                yield part
        if parsed.done:
            return
        data = await conn.receive(timeout_s)
        if data:
            parsed.feed(data)
        elif parsed.until_close():
            parsed.done = parsed.extra = True  # the end of the body; the connection is spent
        else:
            raise Disconnected("the server closed the connection mid-answer")
