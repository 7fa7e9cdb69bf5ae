"""Binding the allocator to the running backend, once: how waiters park, how time is read.

Both are on the hot path of every model call, so they are looked up once per
allocator instead of per request (``anyio.current_time`` and ``anyio.Event()``
each find the backend again on every call).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel

__all__ = ["Parking", "backend_clock", "parking"]


class Parking(NamedTuple):
    """How a waiting request parks: ``new()`` a token, ``await wait(token)``, ``wake(token)``.

    ``native``: the token is a loop future, awaitable itself (``wait`` is the identity).
    """

    new: Callable[[], Any]
    wake: Callable[[Any], None]
    wait: Callable[[Any], Awaitable[Any]]
    native: bool = False
    #: What ``set_result`` on a future that is already done raises (native only).
    invalid_state: type[BaseException] = RuntimeError


def parking() -> Parking:
    """The parking primitive of the running loop, chosen once per allocator.

    On any backend an :class:`anyio.Event` does.  When the running loop can make a
    bare future (asyncio and uvloop loops can, found by duck typing through
    :func:`anyio.lowlevel.current_token`, no asyncio import), the future itself is
    the token: one object per wait instead of an Event's three, and no coroutine
    layers.  This is the hot path of every model call.  Cancellation behaves the
    same: the task is cancelled while awaiting the future.
    """
    event_cls: Any = type(anyio.Event())
    loop = _native_loop()
    create_future: Callable[[], Any] | None = getattr(loop, "create_future", None)
    if create_future is None:
        return Parking(event_cls, event_cls.set, event_cls.wait)
    from asyncio import Future, InvalidStateError  # what asyncio and uvloop futures raise

    if getattr(type(loop).create_future, "__qualname__", "") == "BaseEventLoop.create_future":
        # What asyncio's stock create_future makes (``Future(loop=self)``), without its
        # Python frame: measured cheaper per wait, the keyword's dictionary included.
        create_future = partial(Future, loop=loop)
    return Parking(create_future, _wake_future, _same, native=True,
                   invalid_state=InvalidStateError)


def _native_loop() -> Any:
    """The running loop object when the backend exposes one (asyncio, uvloop), else None."""
    current_token: Callable[[], Any] | None = getattr(anyio.lowlevel, "current_token", None)
    token = current_token() if current_token is not None else None
    return getattr(token, "native_token", None)


def _wake_future(future: Any) -> None:
    if not future.done():
        future.set_result(None)


def _same(future: Any) -> Any:
    return future


def backend_clock() -> Callable[[], float]:
    """The running backend's clock, looked up once (``anyio.current_time`` does it per call).

    On a loop with ``create_future`` and ``time`` (asyncio, uvloop) that is the loop's
    own ``time`` method, which is what ``anyio.current_time`` returns there; when that
    method is asyncio's stock one (``return time.monotonic()``), :func:`time.monotonic`
    itself, which saves a Python frame per reading on the hot path.
    """
    loop = _native_loop()
    loop_time: Callable[[], float] | None = getattr(loop, "time", None)
    if loop_time is not None and hasattr(loop, "create_future"):
        stock = getattr(type(loop).time, "__qualname__", "") == "BaseEventLoop.time"
        # The same reading anyio.current_time() gives on this loop, one frame cheaper.
        return time.monotonic if stock else loop_time  # noqa: TID251
    try:
        from anyio._core._eventloop import get_async_backend

        clock: Callable[[], float] = get_async_backend().current_time
    except Exception:  # pragma: no cover - anyio internals moved
        return anyio.current_time
    return clock
