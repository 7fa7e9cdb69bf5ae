"""The Redis connection behind :class:`~scheduler.store._redis.RedisStore`.

Owns the ``redis.asyncio`` client, the Lua scripts of :mod:`._redis_lua`
(loaded once, called by SHA, reloaded after ``NOSCRIPT``) and whether Redis
answers: after a failed attempt, writes skip Redis for a moment instead of
reconnecting on every call.  asyncio only, like the store it serves.

The client runs on a *blocking* pool of ``distributed.max_connections``
connections: ten thousand tasks calling at once wait their turn for a
connection instead of opening one each (redis-py's default pool refuses the
101st with "Too many connections").  Errors that say something other than "Redis
is unreachable" — the pool exhausted, credentials refused — are raised as
:class:`~scheduler.core.StoreError` naming the cause, never as an outage.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from redis import exceptions as _exc
from redis.exceptions import AuthenticationError, NoScriptError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scheduler.core import StoreError, StoreUnavailableError, get_logger
from scheduler.store._redis_lua import SCRIPTS

_log = get_logger("vibe_engine.store.redis")
#: The errors that mean "Redis is unreachable" (anything else from Redis is a bug).
DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
#: ``ConnectionError`` subclasses that are *not* an outage: retrying or spooling cannot help.
#: (``MaxConnectionsError`` exists from redis-py 6; ``AuthorizationError`` from 5.1.)
_NOT_DOWN: tuple[type[BaseException], ...] = tuple(
    c for c in (AuthenticationError, getattr(_exc, "AuthorizationError", None),
                getattr(_exc, "MaxConnectionsError", None)) if isinstance(c, type))
#: What taking a connection may raise that is no outage: those, and a refused set-up
#: command (``SELECT 99``: "DB index is out of range").
_REFUSED: tuple[type[BaseException], ...] = (*_NOT_DOWN, _exc.ResponseError)


class _Pool(aioredis.BlockingConnectionPool):
    """A blocking pool that raises the errors that are not an outage as :class:`StoreError`.

    They surface while a connection is taken (or made), before any command is
    sent; raised as ``StoreError`` they pass every ``except DOWN`` unchanged.
    """

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            # redis-py leaves this method untyped
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except _REFUSED as exc:
            raise StoreError(f"Redis refused the connection ({type(exc).__name__}): {exc}"
                             ) from exc
#: After a failed attempt, writes go straight to the spool for this long (no reconnect storm).
_RETRY_AFTER_S = 0.25


class RedisConnection:
    """One client to ``url``, the scripts loaded on it, and whether Redis is up."""

    def __init__(
        self, url: str, *, namespace: str, socket_timeout_s: float, failure_mode: str,
        max_connections: int = 50,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self._namespace = namespace
        self._timeout = socket_timeout_s
        self._failure_mode = failure_mode
        self._client: aioredis.Redis | None = None
        self._shas: dict[str, str] = {}
        self._up = False
        self._retry_at = float("-inf")

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError(f"RedisStore({self._namespace}) is not open; call open() first")
        return self._client

    @property
    def up(self) -> bool:
        """Redis answered the last attempt."""
        return self._up

    async def open(self) -> None:
        """Connect and load the scripts (raises :class:`StoreUnavailableError` if unreachable)."""
        if self._client is None:
            # timeout=None: a caller waits for a free connection as long as it takes; each
            # command is bounded by the socket timeout, so connections always come back
            pool = _Pool.from_url(
                self.url, max_connections=self.max_connections, timeout=None,
                decode_responses=True, socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
            )
            self._client = aioredis.Redis.from_pool(pool)
        try:
            for name, src in SCRIPTS.items():
                self._shas[name] = await self.client.script_load(src)
        except DOWN as exc:
            raise StoreUnavailableError(
                f"cannot reach Redis at {redacted(self.url)}: {exc}") from exc
        self._up = True

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the Lua script ``name``; the :data:`DOWN` errors propagate as they are."""
        conn = self.client
        try:
            try:
                return await conn.evalsha(self._shas[name], len(keys), *keys, *args)
            except NoScriptError:  # Redis restarted or SCRIPT FLUSH: load again, once
                self._shas[name] = await conn.script_load(SCRIPTS[name])
                return await conn.evalsha(self._shas[name], len(keys), *keys, *args)
        except DOWN:
            raise
        except RedisError as exc:
            raise StoreError(f"Redis script {name} failed: {exc}") from exc

    def backing_off(self) -> bool:
        """Redis failed moments ago: skip it for now rather than reconnect on every call."""
        return not self._up and anyio.current_time() < self._retry_at

    def mark_up(self) -> bool:
        """Redis answered; ``True`` when this ends an outage."""
        recovered = not self._up
        if recovered:
            _log.info("redis_reconnected", namespace=self._namespace)
        self._up = True
        return recovered

    def mark_down(self, exc: BaseException) -> None:
        """Redis did not answer: back off for a moment."""
        self._retry_at = anyio.current_time() + _RETRY_AFTER_S
        if self._up:
            _log.warning("redis_unavailable", namespace=self._namespace, error=str(exc),
                         failure_mode=self._failure_mode)
        self._up = False

    def unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        """Mark Redis down and build the error to raise for the failed ``what``."""
        self.mark_down(exc)
        return StoreUnavailableError(f"Redis unreachable ({what}): {exc}")


def redacted(url: str) -> str:
    """``url`` without its password (user part or ``?password=``), for a message."""
    parts = urlsplit(url)
    if parts.password is None and "password=" not in parts.query:
        return url
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)]
    netloc = parts.netloc
    if parts.password is not None:
        user = f"{parts.username}:" if parts.username else ":"
        netloc = f"{user}***@{netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))


def split_namespace(url: str) -> tuple[str, str | None]:
    """Remove a ``namespace=`` query parameter from a Redis URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    ns = next((v for k, v in query if k == "namespace"), None)
    rest = urlencode([(k, v) for k, v in query if k != "namespace"])
    return urlunsplit(parts._replace(query=rest)), ns


@dataclass(frozen=True, slots=True)
class RedisStoreStatistics:
    """What :meth:`RedisStore.statistics` reports."""

    namespace: str
    connected: bool
    failure_mode: str
    spooled_writes: int
    replayed_writes: int
    fail_open_tokens_used: int
    fail_open_cost_used: float


#: How long a replay waits for a reader's look at the spool (a Redis read and a file read:
#: milliseconds) before leaving the spool to whoever holds it, and how long a reader
#: waits for a replay under way (then reads as it stands: a process stopped mid-replay).
_LOCK_WAITS = (0.1, 30.0)


@contextlib.asynccontextmanager
async def replay_lock(spool: Path) -> AsyncIterator[bool]:
    """Whether this process may replay ``spool`` now: ``False`` while another process
    replays it (a ``spool_path`` shared by mistake, a crashed run's spool opened twice);
    two replays would each drop the entries they replayed, losing what came after."""
    async with _spool_lock(spool, fcntl.LOCK_EX, _LOCK_WAITS[0]) as mine:
        yield mine


@contextlib.asynccontextmanager
async def spool_read_lock(spool: Path) -> AsyncIterator[bool]:
    """Held while Redis's totals and ``spool`` are read together: a replay in another
    process (the run beside ``status``) has entries in Redis that it drops from the spool
    only at its end, so a read in between would count them twice."""
    async with _spool_lock(spool, fcntl.LOCK_SH, _LOCK_WAITS[1]) as held:
        yield held


@contextlib.asynccontextmanager
async def _spool_lock(spool: Path, mode: int, wait_s: float) -> AsyncIterator[bool]:
    """``flock`` ``mode`` on the file beside ``spool``, tried for ``wait_s`` (the event
    loop runs meanwhile); whether it is held.  Where no lock file can be made: held."""
    try:
        fd = os.open(spool.with_name(spool.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield True  # no lock to take where the spool lives: as if none were needed
        return
    try:
        deadline = anyio.current_time() + wait_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError:
                if anyio.current_time() >= deadline:
                    break
                await anyio.sleep(0.01)
                continue
            yield True
            return
        yield False
    finally:
        os.close(fd)  # closing drops the flock
