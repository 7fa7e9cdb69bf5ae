"""Idle keep-alive connections, and sending a request on one without ever sending it twice
once the server may have it.

httpx's pool (httpcore) polls every pooled connection for readability on each request
and walks the pool again when a response closes; with a few hundred keep-alive
connections that walk cost more CPU than the rest of a call.  Here each key (an origin)
has a LIFO list of idle connections and only the one taken is checked.

On asyncio a connection belongs to the event loop that opened it.  The pool holds the
connections of one loop: when it is used from another (a provider kept from one
``anyio.run`` to the next) it drops those it holds, and a loop that shuts down closes
its idle connections first, while it still can.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from scheduler.core import loop_time
from scheduler.net._asyncio import at_loop_end, running_loop
from scheduler.net._conn import Conn
from scheduler.net._errors import WriteFailed

#: Idle connections are dropped after this long: below the 5 s keep-alive of common
#: servers (uvicorn, many proxies), so a request rarely meets one the server is closing.
IDLE_EXPIRY_S = 4.0
K = TypeVar("K", bound=Hashable)


class IdlePool(Generic[K]):
    """Idle connections by key (an origin), at most ``max_idle`` in all."""

    def __init__(self, max_idle: int) -> None:
        self._max_idle = max_idle
        self._idle: dict[K, list[Conn]] = {}
        self._count = 0
        self._loop: object | None = None  # the asyncio loop of the idle connections
        self._watch: object | None = None  # the task that closes them when it ends

    async def take(self, key: K) -> Conn | None:
        """The most recently used idle connection that is still good, or ``None``.  (The
        loop is checked here: a connection is put back on the loop that took it.)"""
        if running_loop() is not self._loop:
            await self._adopt_loop()
        idle = self._idle.get(key)
        if idle:
            now = loop_time()
            while idle:
                conn = idle.pop()
                self._count -= 1
                if now - conn.idle_since < IDLE_EXPIRY_S and not conn.readable():
                    return conn
                await conn.close()
        return None

    async def put(self, key: K, conn: Conn) -> None:
        """Keeps ``conn`` for the next request to ``key`` (closes it when the pool is full)."""
        if self._loop is None and running_loop() is not None:
            await self._adopt_loop()  # put before any take: watch this loop from now on
        if self._count >= self._max_idle:
            await conn.close()
            return
        conn.idle_since = loop_time()
        self._idle.setdefault(key, []).append(conn)
        self._count += 1

    async def aclose(self) -> None:
        idle, self._idle, self._count = self._idle, {}, 0
        for conns in idle.values():
            for conn in conns:
                await conn.close()

    async def _adopt_loop(self) -> None:
        """Serve the running loop: the idle connections of another cannot carry its
        requests (their loop may be closed: closing them is best effort)."""
        loop = running_loop()
        self._loop = loop
        await self.aclose()
        if loop is not None:
            self._watch = at_loop_end(loop, lambda: self._loop_ended(loop))

    async def _loop_ended(self, loop: object) -> None:
        if self._loop is loop:
            self._loop = self._watch = None
            await self.aclose()

    async def send(self, key: K, connect: Callable[[], Awaitable[Conn]], data: bytes,
                   timeout_s: float | None = None) -> Conn:
        """A connection to ``key`` that took ``data`` whole: an idle one or a new one.

        Only a request that died on a reused idle connection, before the server could
        take it whole, is sent once more; a request that failed otherwise may have been
        acted on and is never sent again.
        """
        conn = await self.take(key)
        reused = conn is not None
        if conn is None:
            conn = await connect()
        if await conn.send(data, timeout_s):
            return conn
        if reused:
            # the server closed this idle connection before it could take the whole
            # request, so it cannot have acted on it: sent once more, on a new one
            conn = await connect()
            if await conn.send(data, timeout_s):
                return conn
        raise WriteFailed("the server closed the connection")
