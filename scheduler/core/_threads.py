"""Blocking work (files, SQLite) off the event loop: a worker thread on asyncio, in line
on other loops.

Production runs on asyncio, where a file write or a commit in a worker thread keeps the
loop free for thousands of agents.  Tests run on trio's ``MockClock``, which counts a
task waiting for a worker thread as idle and jumps the virtual clock meanwhile -- past
task time budgets; in line, the work takes no virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

__all__ = ["off_loop", "on_asyncio"]

T = TypeVar("T")


def on_asyncio() -> bool:
    """Whether the running loop is asyncio's."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread on asyncio, in line elsewhere (see the module doc)."""
    if on_asyncio():
        return await anyio.to_thread.run_sync(fn, *args)
    return fn(*args)
