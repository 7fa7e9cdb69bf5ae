"""Binding the allocator to the running backend, once: how waiters park, how time is read.

Both are on the hot path of every model call, so they are looked up once per
allocator instead of per request (``anyio.current_time`` and ``anyio.Event()``
each find the backend again on every call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["backend_clock", "parker_class"]


def parker_class() -> Callable[[], Any]:
    """What a waiting request parks on: an object with ``set()`` and awaitable ``wait()``.

    On any backend an :class:`anyio.Event` does.  When the running loop can make a
    bare future (asyncio and uvloop loops can, found by duck typing through
    :func:`anyio.lowlevel.current_token`, no asyncio import), one future per wait
    replaces the three objects and two coroutine layers of an Event: this is the
    hot path of every model call.  Cancellation behaves the same: the task is
    cancelled while awaiting the future.
    """
    event_cls: Callable[[], Any] = type(anyio.Event())
    current_token: Callable[[], Any] | None = getattr(anyio.lowlevel, "current_token", None)
    token = current_token() if current_token is not None else None
    native = getattr(token, "native_token", None)
    maybe_create: Callable[[], Any] | None = getattr(native, "create_future", None)
    if maybe_create is None:
        return event_cls
    create_future: Callable[[], Any] = maybe_create

    class FutureParker:
        __slots__ = ("_future",)

        def __init__(self) -> None:
            self._future = create_future()

        def set(self) -> None:
            if not self._future.done():
                self._future.set_result(None)

        def wait(self) -> Any:
            return self._future

    return FutureParker


def backend_clock() -> Callable[[], float]:
    """The running backend's clock, looked up once (``anyio.current_time`` does it per call)."""
    try:
        from anyio._core._eventloop import get_async_backend

        clock: Callable[[], float] = get_async_backend().current_time
    except Exception:  # pragma: no cover - anyio internals moved
        return anyio.current_time
    return clock
