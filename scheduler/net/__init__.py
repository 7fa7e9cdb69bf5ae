"""A lean keep-alive HTTP/1.1 client layer: serve's upstream hop and the provider's
httpx transport are both built on it.

Owns connecting (TLS with httpx's default context; on asyncio a Protocol over the loop's
own transport, on trio anyio's streams), the idle pool with its liveness check, request
heads with the header-injection check, httptools response parsing and the error classes.
May import ``core`` only (a sibling of ``config``).
"""

from scheduler.net._conn import Conn as Conn
from scheduler.net._conn import SocketOptions as SocketOptions
from scheduler.net._conn import connect as connect
from scheduler.net._conn import default_ssl_context as default_ssl_context
from scheduler.net._errors import ConnectFailed as ConnectFailed
from scheduler.net._errors import ConnectTimedOut as ConnectTimedOut
from scheduler.net._errors import Disconnected as Disconnected
from scheduler.net._errors import HttpError as HttpError
from scheduler.net._errors import HttpTimeout as HttpTimeout
from scheduler.net._errors import ReadFailed as ReadFailed
from scheduler.net._errors import UnsafeHead as UnsafeHead
from scheduler.net._errors import WriteFailed as WriteFailed
from scheduler.net._errors import WriteTimedOut as WriteTimedOut
from scheduler.net._pool import IDLE_EXPIRY_S as IDLE_EXPIRY_S
from scheduler.net._pool import IdlePool as IdlePool
from scheduler.net._wire import Parsed as Parsed
from scheduler.net._wire import body_chunks as body_chunks
from scheduler.net._wire import end_head as end_head
from scheduler.net._wire import read_head as read_head

__all__ = [
    "IDLE_EXPIRY_S",
    "Conn",
    "ConnectFailed",
    "ConnectTimedOut",
    "Disconnected",
    "HttpError",
    "HttpTimeout",
    "IdlePool",
    "Parsed",
    "ReadFailed",
    "SocketOptions",
    "UnsafeHead",
    "WriteFailed",
    "WriteTimedOut",
    "body_chunks",
    "connect",
    "default_ssl_context",
    "end_head",
    "read_head",
]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
