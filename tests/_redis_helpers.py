"""Helpers for the Redis tests: reachability, unique namespaces, a TCP proxy we can cut.

Redis tests use the real server on 127.0.0.1:6379 (``VIBE_REDIS_URL`` overrides).
When it is unreachable they skip with the reason, unless ``VIBE_REQUIRE_REDIS=1``
(CI), in which case they fail.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import redis

REDIS_URL = os.environ.get("VIBE_REDIS_URL", "redis://127.0.0.1:6379/0")
START_HINT = (
    'start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ""'
)


def redis_or_skip() -> redis.Redis:
    """A sync client to the test Redis, or skip (fail under VIBE_REQUIRE_REDIS=1)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        client.close()
        reason = f"Redis not reachable at {REDIS_URL} ({exc}); {START_HINT}"
        if os.environ.get("VIBE_REQUIRE_REDIS") == "1":
            pytest.fail(f"VIBE_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    return client


def new_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    pattern = f"vibe:\\{{{namespace}\\}}:*"
    keys = list(client.scan_iter(match=pattern, count=500))
    if keys:
        client.delete(*keys)



class TcpProxy:
    """A tiny TCP proxy on 127.0.0.1 in a thread; ``cut()`` drops and refuses connections."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 6379) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._up = True
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Close every proxied connection and refuse new ones (Redis looks down)."""
        with self._lock:
            self._up = False
            for s in list(self._peers):
                self._drop(s)

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        with self._lock:
            for s in list(self._peers):
                self._drop(s)
        self._sel.close()
        self._listener.close()

    def _drop(self, s: socket.socket) -> None:
        other = self._peers.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            self._peers.pop(x, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(x)
            x.close()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        if not self._up:
            client.close()
            return
        upstream = socket.create_connection(self.target)
        for s in (client, upstream):
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ, None)
        self._peers[client], self._peers[upstream] = upstream, client

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with self._lock:
                    if sock is self._listener:
                        self._accept()
                        continue
                    if sock not in self._peers:
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(sock)
                        continue
                    try:
                        self._peers[sock].sendall(data)
                    except OSError:
                        self._drop(sock)


class ScriptGate:
    """Holds a :class:`RedisStore`'s ``at``-th Lua script (a replay half way: at 2, e1 is
    in Redis and not yet dropped from the spool) until :meth:`open`; ``reached`` is set
    when it is held.  A context manager: the store's own scripts run again after it."""

    def __init__(self, store: Any, at: int = 1) -> None:
        import anyio

        self.store, self.at, self.calls = store, at, 0
        self.reached, self._opened = anyio.Event(), anyio.Event()
        self._script = store._link.script

    async def _held(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            await self._opened.wait()
        return await self._script(name, keys, args)

    def open(self) -> None:
        self._opened.set()

    def __enter__(self) -> ScriptGate:
        self.store._link.script = self._held
        return self

    def __exit__(self, *exc: object) -> None:
        self.store._link.script = self._script
