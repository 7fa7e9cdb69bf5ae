"""How an HTTP exchange fails below HTTP: the classes both clients raise or map."""

from __future__ import annotations


class HttpError(Exception):
    """The exchange failed below HTTP: nothing usable came back."""


class ConnectFailed(HttpError):
    """No connection to the server (refused, unresolvable, TLS failure, timeout)."""


class ConnectTimedOut(ConnectFailed):
    """The connection was not made within the connect timeout."""


class HttpTimeout(HttpError):
    """The server sent nothing within the read timeout."""


class WriteTimedOut(HttpTimeout):
    """The request could not be sent within the write timeout."""


class Disconnected(HttpError):
    """The connection ended, or the answer was not HTTP, before the response was whole."""


class WriteFailed(Disconnected):
    """The connection was closed before it took the whole request."""


class ReadFailed(Disconnected):
    """The connection failed while an answer was read (reset, broken)."""


class UnsafeHead(ValueError):
    """A header or the request target holds a line break, NUL or space: sent as it is,
    it would smuggle a header or a request."""
