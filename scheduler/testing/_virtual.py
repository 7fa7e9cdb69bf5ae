"""Virtual time: trio's ``MockClock`` jumps to the next deadline when every task is blocked.

A 5-minute lease expiry then takes milliseconds, and the timeline is exact
(``anyio.current_time()`` reads the mock clock).  Code under test must be
backend-neutral anyio; code that needs real I/O (sockets, threads whose
wait should not let the clock jump, subprocesses, ``redis.asyncio``) runs
with :func:`run_real` on asyncio and real time instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def virtual_backend() -> tuple[str, dict[str, Any]]:
    """The anyio backend spec of virtual time: a fresh ``MockClock`` on trio.

    Return it from the anyio pytest plugin's ``anyio_backend`` fixture, or pass
    it to ``anyio.run(fn, backend=name, backend_options=options)``.
    """
    import trio.testing  # a test dependency: importing this package must not need it

    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


def run_virtual(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` to completion on virtual time (a fresh clock at 0)."""
    backend, options = virtual_backend()
    return anyio.run(fn, *args, backend=backend, backend_options=options)


def run_real(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` on asyncio and real time (real I/O, or asyncio-specific code)."""
    return anyio.run(fn, *args, backend="asyncio")
