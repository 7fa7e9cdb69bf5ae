"""Resolving a deadlock: the victim yields (R5.7).

:class:`DeadlockResolver` is the ``resolve`` callback of the
:class:`~scheduler.deadlock._graph.DeadlockDetector`.  Given a victim it

1. asks the runtime to abort the victim's current attempt (cancel its cancel
   scope) and to requeue its task keeping its attempt count — or, after
   ``DeadlockConfig.max_requeues`` yields, to fail it with a
   :class:`TaskAbortedError` reason;
2. releases every lock the victim holds at once, so the other agents of the
   cycle go on without waiting for the victim to unwind;
3. releases its leases through an injected callback;
4. emits ``deadlock_victim`` — "agent <victim> yielded due to deadlock" —
   through structlog and the :class:`EventBus`.

:func:`describer` tells the victim policy what it needs of each holder; the
composition root (``scheduler.runtime._build``) connects the detector, the
resolver and the task table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from policies.victim import VictimCandidate
from scheduler.budget import Tracker
from scheduler.config import DeadlockConfig
from scheduler.core import EventBus, TaskAbortedError, get_logger
from scheduler.deadlock._graph import Describe
from scheduler.deadlock._locks import LockManager
from scheduler.tasks import TaskHandle

_log = get_logger("vibe_engine.deadlock")

#: ``abort(victim, reason, requeue) -> bool``: cancel the victim's attempt; False if not running.
Abort = Callable[[str, str, bool], bool]
ReleaseLeases = Callable[[str], Awaitable[None]]


class DeadlockResolver:
    """Makes a victim yield: abort + requeue (bounded), free its locks and leases, tell."""

    def __init__(
        self,
        *,
        locks: LockManager,
        abort: Abort,
        bus: EventBus | None = None,
        release_leases: ReleaseLeases | None = None,
        config: DeadlockConfig | None = None,
    ) -> None:
        self.locks = locks
        self.config = config or DeadlockConfig()
        self._abort = abort
        self._bus = bus
        self._release_leases = release_leases
        self.yields: dict[str, int] = {}

    async def __call__(self, victim: str, cycle: tuple[str, ...]) -> None:
        n = self.yields[victim] = self.yields.get(victim, 0) + 1
        requeue = n <= self.config.max_requeues
        shown = " → ".join((*cycle, cycle[0]))
        reason = str(TaskAbortedError(victim, f"yielded due to deadlock ({shown})"))
        aborted = self._abort(victim, reason, requeue)
        released = self.locks.release_all(victim)
        if self._release_leases is not None:
            await self._release_leases(victim)
        message = f"agent {victim} yielded due to deadlock"
        data: dict[str, Any] = {"cycle": list(cycle), "released": released, "aborted": aborted,
                "requeue": requeue, "yields": n}
        if self._bus is not None:
            self._bus.emit("deadlock_victim", message, task_id=victim, level="warning", **data)
        else:
            _log.warning("deadlock_victim", message=message, task_id=victim, **data)


def describer(tasks: Mapping[str, TaskHandle], tracker: Tracker) -> Describe:
    """What the victim policy knows about a holder: priority, work done, start time (R5.7).

    A holder that is not a task cannot be aborted: it ranks highest, so it is
    chosen only when nothing else can be.
    """

    def describe(holder: str) -> VictimCandidate:
        handle = tasks.get(holder)
        if handle is None:
            return VictimCandidate(holder, float("inf"), float("inf"), float("-inf"))
        tokens = 0.0
        if holder in tracker.tasks():
            tokens = tracker.task_scope(holder).used("tokens")
        return VictimCandidate(holder, float(handle.priority), tokens, handle.started_at)

    return describe
