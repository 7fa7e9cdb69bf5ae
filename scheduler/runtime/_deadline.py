"""A task's wall-time budget as a deadline on its attempt (R1.1, R1.3 "time per task").

The gateway checks the time budget before every governed call, but an agent that
computes, sleeps or waits without calling would never reach that check.  The
orchestrator therefore runs each attempt under :meth:`Deadlines.run_within`: one
watchdog for every attempt ends an attempt once its task's time budget is spent.

The deadline is read again from the tracker each time, so time a person adds to a
paused task (``add_budget time_s=…``) moves it; while the task is paused for a
decision, or inside a critical operation (R3.6), the watchdog waits instead of
cancelling.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import anyio

from scheduler.budget import Tracker
from scheduler.control import PauseController
from scheduler.core import BudgetExceededError, EventBus

#: Starts a background task in the run's task group (``TaskGroup.start_soon``).
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]

#: How often the watchdog looks again while a paused or critical task holds it off.
_RECHECK_S = 0.5


class Deadlines:
    """One watchdog for the wall-time budgets of every running attempt.

    Each attempt registers its cancel scope; a single service (started in the run's task
    group while any attempt is registered, ended when none is) sleeps until the earliest
    deadline, reads the task's time left again and either reschedules it (time was
    added, or the task is paused or in a critical operation) or cancels the attempt.
    One service instead of a watchdog task per task: an agent waiting for its turn holds
    no task, cancel scope and event of its own for its deadline.
    """

    def __init__(self, *, tracker: Tracker, controller: PauseController, bus: EventBus,
                 on_expired: Callable[[str], None] | None = None) -> None:
        self._tracker = tracker
        #: Called with the task id once the watchdog cancelled its attempt.
        self._on_expired = on_expired
        self._controller = controller
        self._bus = bus
        #: (loop time due, attempt number, task id), earliest first.
        self._due: list[tuple[float, int, str]] = []
        #: The running attempts by task: their ``with`` (its scope and attempt number).
        self._bodies: dict[str, Watch] = {}
        #: The attempts (by serial) the watchdog cancelled, until their ``with`` ends.
        self._expired: dict[int, bool] = {}
        self._serial = 0
        self._serving = False
        self._wake: anyio.Event | None = None

    def watch(self, task_id: str, scope: anyio.CancelScope, spawn: Spawn) -> Watch:
        """Watch the attempt that ``scope`` (its cancel scope) runs: leaving the ``with``
        raises :class:`BudgetExceededError` (``time_s``) when the task's wall-time budget
        ran out first and the watchdog cancelled ``scope``.  The attempt's own scope, not
        one more per attempt: an agent waiting for its turn holds no scope for its deadline."""
        self._serial += 1
        serial = self._serial
        watch = self._bodies[task_id] = Watch(self, task_id, serial, scope)
        self._schedule(task_id, serial, anyio.current_time())
        if not self._serving:
            self._serving = True
            spawn(self._serve)
        return watch

    def drop(self, task_id: str) -> None:
        """Stop watching the task's attempt: the run gave up on it (its ``with`` may never
        end, and the service runs while any attempt is watched)."""
        watch = self._bodies.get(task_id)
        if watch is not None:
            self._unwatch(task_id, watch._serial)

    def _unwatch(self, task_id: str, serial: int) -> bool:
        """Stop watching an attempt; whether the watchdog cancelled it."""
        watch = self._bodies.get(task_id)
        if watch is not None and watch._serial == serial:
            del self._bodies[task_id]
        if not self._bodies and self._wake is not None:
            self._wake.set()  # the last attempt ended: the service ends too
        return self._expired.pop(serial, False)

    def _schedule(self, task_id: str, serial: int, now: float) -> None:
        left = self._tracker.time_left(task_id)
        if left is None:
            return  # no time budget
        due = now + max(left, 0.0)
        if self._due and due >= self._due[0][0]:
            heapq.heappush(self._due, (due, serial, task_id))
            return
        heapq.heappush(self._due, (due, serial, task_id))
        if self._wake is not None:  # a new earliest deadline: the service sleeps less
            self._wake.set()

    async def _serve(self) -> None:
        while self._bodies:
            now = anyio.current_time()
            if self._due and self._due[0][0] <= now:
                self._check(*heapq.heappop(self._due)[1:], now)
                continue
            self._wake = anyio.Event()
            with anyio.move_on_after(self._due[0][0] - now if self._due else float("inf")):
                await self._wake.wait()
            self._wake = None
        self._serving = False  # no attempt left: the run's task group may end

    def _check(self, serial: int, task_id: str, now: float) -> None:
        watch = self._bodies.get(task_id)
        if watch is None or watch._serial != serial:
            return  # that attempt ended
        left = self._tracker.time_left(task_id)
        if left is None:
            return
        if left > 0:
            self._schedule(task_id, serial, now)
        elif self._controller.is_paused(task_id) or (
                self._controller.current_critical(task_id) is not None):
            heapq.heappush(self._due, (now + _RECHECK_S, serial, task_id))
        else:
            self._expired[serial] = True
            watch._scope.cancel()
            if self._on_expired is not None:
                self._on_expired(task_id)


class Watch:
    """The ``with`` of one watched attempt (see :meth:`Deadlines.watch`)."""

    __slots__ = ("_deadlines", "_scope", "_serial", "_task_id")

    def __init__(self, deadlines: Deadlines, task_id: str, serial: int,
                 scope: anyio.CancelScope) -> None:
        self._deadlines, self._task_id, self._serial = deadlines, task_id, serial
        self._scope = scope

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        deadlines = self._deadlines
        if deadlines._unwatch(self._task_id, self._serial):
            # only the watchdog cancels for the deadline: the attempt's cancellation
            # becomes the budget error its task fails with
            _raise_expired(self._task_id, deadlines._tracker, deadlines._bus)


def _raise_expired(task_id: str, tracker: Tracker, bus: EventBus) -> NoReturn:
    scope = tracker.task_scope(task_id)
    limit = scope.limits.time_s or 0.0
    bus.emit("task_time_exceeded", f"task {task_id} stopped: wall-time budget of {limit:g} s "
             "spent", task_id=task_id, level="warning", limit=limit)
    raise BudgetExceededError(scope.name, "time_s", anyio.current_time() - scope.started_at,
                              limit)
