"""Watching for a client that leaves, on asyncio: only once its request has waited (#21).

A client that leaves while its request waits (a lease queue, a hold at a budget limit)
takes the request with it, which takes a watch of ASGI's ``receive`` beside the call.
Started with every request, that watch (an anyio task group, a task, and the server's
``receive`` waiting on its event) would be a good part of serve's own CPU per call,
while an uncontended request reaches the upstream within a millisecond -- after which
the client's leaving no longer matters.  So on asyncio the watch is a plain task started
by a timer only if the request is still running ``delay_s`` later; elsewhere (trio, the
in-process transport's tests) the caller keeps its task group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import Receive

#: The watches running (the loop keeps only weak references to tasks).
_RUNNING: set[asyncio.Task[None]] = set()


def watch_later(delay_s: float, receive: Receive, on_left: Callable[[], None]
                ) -> Callable[[], None] | None:
    """Call ``on_left`` when ``receive`` says ``http.disconnect``, watching from
    ``delay_s`` on; returns the function that cancels a watch not started yet, or None
    when the running loop is not asyncio's."""
    loop = asyncio._get_running_loop()  # None, not an exception, off asyncio
    if loop is None:
        return None

    def start() -> None:
        task = loop.create_task(_watch(receive, on_left))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    return loop.call_later(delay_s, start).cancel


async def _watch(receive: Receive, on_left: Callable[[], None]) -> None:
    # ASGI's receive() says http.disconnect once the response was sent, so this ends
    while (await receive())["type"] != "http.disconnect":
        pass
    on_left()
