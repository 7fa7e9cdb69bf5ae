"""Telling about waits for a lease (R5.5): the agent asks, the run logs the long ones.

A request that cannot be granted at once waits in its pool's queue.  The waiting
agent reads its queue position and estimated wait through ``ctx.waiting()``
(:func:`waits_of`); :func:`long_wait_reporter` is a service of the run that emits
``lease_wait_long`` once per request that has waited longer than ``long_s``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from scheduler.allocator import Allocator, WaiterStatistics
from scheduler.core import EventBus

#: A wait this long is logged (the aging step: the request is about to be raised).
LONG_WAIT_S = 30.0


def waits_of(allocator: Allocator, task_id: str) -> tuple[WaiterStatistics, ...]:
    """``task_id``'s waiting requests: pool, queue position (1 = next), estimated wait."""
    return allocator.statistics().waiting(task_id)


def long_wait_reporter(
    allocator: Allocator, bus: EventBus, *, long_s: float = LONG_WAIT_S,
    every_s: float = 5.0,
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A service emitting ``lease_wait_long`` once for each request waiting over ``long_s``."""

    async def report_long_waits() -> None:
        told: set[tuple[str, str, float]] = set()
        while True:
            await anyio.sleep(every_s)
            if allocator.longest_wait_s() < long_s:
                told.clear()  # every request told about has been granted or withdrawn
                continue  # (the queue's full statistics cost a sort of every waiter)
            now = anyio.current_time()
            waiting = set()
            for w in allocator.statistics().waiters:
                if w.waited_s < long_s:
                    continue  # still short next time: not told, nothing to forget
                key = (w.holder, w.pool, round(now - w.waited_s, 3))  # one request
                waiting.add(key)
                if key not in told:
                    told.add(key)
                    bus.emit(
                        "lease_wait_long",
                        f"task {w.holder} has waited {w.waited_s:.0f} s for {w.pool}: "
                        f"position {w.position}, about {w.estimated_wait_s:.0f} s more",
                        task_id=w.holder, level="warning", pool=w.pool, position=w.position,
                        waited_s=w.waited_s, estimated_wait_s=w.estimated_wait_s,
                    )
            told &= waiting  # forget requests that were granted or withdrawn

    return report_long_waits
