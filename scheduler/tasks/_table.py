"""The run's tasks by id, and the one way to cancel a running attempt."""

from __future__ import annotations

from collections.abc import Callable

from scheduler.tasks._state import Abort, TaskHandle


class TaskTable(dict[str, TaskHandle]):
    """Every task of the run by id; shared read-only with observers and the deadlock resolver."""

    #: Called with the handle and the reason once :meth:`abort` cancelled its attempt
    #: (the runtime takes its leases and locks back and watches for the attempt's end).
    on_abort: Callable[[TaskHandle, str], None] | None = None

    def abort(self, task_id: str, reason: str, *, requeue: bool = True) -> bool:
        """Cancel a running attempt; the orchestrator then requeues (keeping the attempt
        count) or fails it.  False when the task is not running an attempt."""
        handle = self.get(task_id)
        if handle is None or handle.cancel_scope is None:
            return False
        handle.abort = Abort(reason, requeue)
        handle.cancel_scope.cancel()
        if self.on_abort is not None:
            self.on_abort(handle, reason)
        return True
