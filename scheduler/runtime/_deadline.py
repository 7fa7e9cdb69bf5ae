"""A task's wall-time budget as a deadline on its attempt (R1.1, R1.3 "time per task").

The gateway checks the time budget before every governed call, but an agent that
computes, sleeps or waits without calling would never reach that check.  The
orchestrator therefore runs each attempt under :func:`run_within_time_budget`: a
watchdog beside the agent ends the attempt once the task's time budget is spent.

The deadline is read again from the tracker each time, so time a person adds to a
paused task (``add_budget time_s=…``) moves it; while the task is paused for a
decision, or inside a critical operation (R3.6), the watchdog waits instead of
cancelling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import anyio

from scheduler.budget import Tracker
from scheduler.control import PauseController
from scheduler.core import BudgetExceededError, EventBus

T = TypeVar("T")
#: Starts a background task in the run's task group (``TaskGroup.start_soon``).
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]

#: How often the watchdog looks again while a paused or critical task holds it off.
_RECHECK_S = 0.5


async def _wait_deadline(task_id: str, tracker: Tracker, controller: PauseController) -> None:
    """Return once ``task_id`` has no time left and is neither paused nor in a critical
    operation."""
    while True:
        left = tracker.remaining(task_id).time_s
        if left is None:
            await anyio.sleep_forever()
            continue
        if left > 0:
            await anyio.sleep(left)
            continue
        if controller.is_paused(task_id) or controller.current_critical(task_id) is not None:
            await anyio.sleep(_RECHECK_S)
            continue
        return


async def run_within_time_budget(
    task_id: str, run: Callable[[], Awaitable[T]], *, tracker: Tracker,
    controller: PauseController, bus: EventBus, spawn: Spawn,
) -> T:
    """Await ``run()``; raise :class:`BudgetExceededError` (``time_s``) when the task's
    wall-time budget runs out first (the agent's work is cancelled).

    The watchdog runs in the run's task group (``spawn``), not in a group of its own, so
    the agent's exceptions reach the orchestrator unwrapped.
    """
    body, watch = anyio.CancelScope(), anyio.CancelScope()

    async def watchdog() -> None:
        with watch:
            await _wait_deadline(task_id, tracker, controller)
            body.cancel()

    spawn(watchdog)
    try:
        with body:
            return await run()
    finally:
        watch.cancel()
    # only the watchdog cancels ``body``: an outer cancellation passes through it
    _raise_expired(task_id, tracker, bus)


def _raise_expired(task_id: str, tracker: Tracker, bus: EventBus) -> NoReturn:
    scope = tracker.task_scope(task_id)
    limit = scope.limits.time_s or 0.0
    bus.emit("task_time_exceeded", f"task {task_id} stopped: wall-time budget of {limit:g} s "
             "spent", task_id=task_id, level="warning", limit=limit)
    raise BudgetExceededError(scope.name, "time_s", anyio.current_time() - scope.started_at,
                              limit)
