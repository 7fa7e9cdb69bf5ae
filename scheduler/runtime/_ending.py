"""Recording how tasks ended, a bounded number at a time (R7.1).

A task's end is recorded before it counts as ended: its ``usage.json`` (and
``result.json``) written by a worker thread, its record saved in the store, its
event emitted.  When many tasks end together -- a pool's last grants, a run of
short tasks -- the file writes queue behind one another, and a task waiting for
its turn there holds its asyncio task, its cancel scope, its coroutine frames and
its file's text: about 3 KiB each, more than it held while it waited for a lease.

So at most :attr:`Endings.limit` tasks record their end at once.  A task ending
beyond that leaves its handle in a queue and returns at once (its task, scope and
frames are freed); the tasks recording theirs take the queued handles in turn
before they return.  The queue holds handles only, which the run keeps anyway for
its report.  Up to ``limit`` ends still share each worker-thread hop and each
store commit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from scheduler.tasks import TaskHandle

#: Tasks recording their end at once: enough for the file writes and store commits of
#: tasks ending together to share hops (each hop costs the event loop CPU: fewer ends per
#: hop, more hops), few enough to keep their frames and texts small.
ENDING_AT_ONCE = 64


class Endings:
    """Runs ``record(handle)`` for ended tasks, at most ``limit`` at once (see the module)."""

    __slots__ = ("_queue", "_record", "_running", "limit")

    def __init__(self, record: Callable[[TaskHandle], Awaitable[None]],
                 limit: int = ENDING_AT_ONCE) -> None:
        self._record = record
        self.limit = limit
        self._queue: deque[TaskHandle] = deque()
        self._running = 0

    @property
    def queued(self) -> int:
        """Ended tasks waiting for a recorder."""
        return len(self._queue)

    async def record(self, handle: TaskHandle) -> None:
        """Record ``handle``'s end -- now, or (``limit`` being reached) by a task recording
        its own, before that one returns.  The caller shields this await: a recorder's
        queued handles are recorded even when the run is cancelled.  When recording an
        end raises, the queued ends are still recorded, then the first error is raised."""
        if self._running >= self.limit:
            self._queue.append(handle)  # a running recorder takes it before it returns
            return
        self._running += 1
        errors: list[Exception] = []
        try:
            for h in self._own_then_queued(handle):
                try:
                    await self._record(h)
                except Exception as exc:  # the others' ends are recorded all the same
                    errors.append(exc)
        finally:
            self._running -= 1
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("recording the ends of tasks failed", errors)

    def _own_then_queued(self, handle: TaskHandle) -> Iterator[TaskHandle]:
        yield handle
        queue = self._queue
        while queue:  # checked after each end: no await between the last check and exit
            yield queue.popleft()
