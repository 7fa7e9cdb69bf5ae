"""Agents that go on after the runtime ended their attempt (R5.7, R1.1, R7.1).

An abort (a deadlock victim, R5.7), a spent wall-time budget (R1.1) or the run's own end
cancels an attempt's scope.  An agent that catches the cancellation and goes on -- it
retries, sleeps again, shields its awaits -- would keep its task's leases and locks,
leave the task's end unrecorded and the run waiting for it for ever.  So the runtime
takes the task's leases and locks back as soon as it ends an attempt, and gives up on an
attempt still running :attr:`Stragglers.grace_s` later: the task's end is recorded, one
warning names it and the run's task group stops waiting for it (on asyncio, see
:mod:`._spawn`).  Its model calls are refused from the abort on (``ctx.llm``).

An attempt that ends as asked costs one look-up in an empty dict: the watch for its end
is made only when the runtime ends an attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import anyio

from scheduler.core import Hook, get_logger
from scheduler.runtime._spawn import Spawner
from scheduler.tasks import TaskHandle, TaskStatus

_log = get_logger("vibe_engine.orchestrator")

#: How long an attempt the runtime ended may take to unwind before the run stops
#: waiting for it: time for an agent's clean-up (a checkpoint, a file closed), not for
#: more work.
GRACE_S = 5.0


class Stragglers:
    """The attempts the runtime ended, until they end (see the module)."""

    def __init__(self, *, release: Callable[[TaskHandle], object],
                 end: Callable[[TaskHandle], Awaitable[None]], group: Callable[[], Spawner],
                 finish: Hook[[TaskHandle]], grace_s: float = GRACE_S) -> None:
        self._release = release  # the task's leases and locks, back at once
        self._end = end  # what ends a task: its end recorded, ``done`` set
        self._group = group  # the run's task group
        self.grace_s = grace_s
        #: Ended attempts not over yet, by task: set once they are.
        self._ending: dict[str, anyio.Event] = {}
        #: Tasks given up on whose agent has not returned yet: how they ended.
        self._given_up: dict[str, tuple[TaskStatus, str]] = {}
        finish.connect(self._finishing)

    def ended(self, handle: TaskHandle) -> bool:
        """The attempt of ``handle`` is over; True when the runtime gave up on it already:
        its end is recorded, and what the late attempt wrote on the handle is undone (the
        caller checks this before any await)."""
        if self._ending:
            over = self._ending.pop(handle.id, None)
            if over is not None:
                over.set()
        if not self._given_up or handle.id not in self._given_up:
            return False
        handle.status, handle.reason = self._given_up.pop(handle.id)
        handle.result = handle.stored_result = None
        return True

    def cancelled(self, handle: TaskHandle, reason: str) -> None:
        """The runtime cancelled the running attempt of ``handle`` (``reason``): its leases
        and locks go back at the next turn of the loop (after a deadlock resolver's own
        release, which reports what it freed), and its end is watched for."""
        self._watch_for_end(handle, TaskStatus.FAILED, reason, take_back=True)

    def _finishing(self, handle: TaskHandle) -> None:
        """A ``finish`` decision unwinds the agent (R3.4): it keeps its locks while it saves
        its work, and its end is watched for."""
        self._watch_for_end(handle, TaskStatus.FINISHED, "saved and finished", take_back=False)

    def _watch_for_end(self, handle: TaskHandle, status: TaskStatus, reason: str, *,
                       take_back: bool) -> None:
        scope = handle.cancel_scope
        if scope is None or handle.id in self._ending:
            return
        self._ending[handle.id] = anyio.Event()
        self._group().start_soon(self._watch, handle, scope, status, reason, take_back)

    async def _watch(self, handle: TaskHandle, scope: anyio.CancelScope, status: TaskStatus,
                     reason: str, take_back: bool) -> None:
        over = self._ending.get(handle.id)
        if over is None:
            return
        if take_back and not over.is_set():
            self._release(handle)
        with anyio.move_on_after(self.grace_s):
            await over.wait()
        if over.is_set() or self._ending.get(handle.id) is not over:
            return
        del self._ending[handle.id]
        await self._give_up(handle, scope, status, reason)

    async def straggler(self, scope: anyio.CancelScope, handles: Iterable[TaskHandle]) -> None:
        """The run's task group let go of the task in ``scope`` (the run ended)."""
        handle = next((h for h in handles if h.cancel_scope is scope), None)
        if handle is not None:
            self._ending.pop(handle.id, None)
            await self._give_up(handle, scope, TaskStatus.INTERRUPTED, "interrupted")

    async def _give_up(self, handle: TaskHandle, scope: anyio.CancelScope,
                       status: TaskStatus, reason: str) -> None:
        _log.warning("agent_ignored_cancellation", task_id=handle.id, agent=handle.spec.agent,
                     grace_s=self.grace_s, reason=reason,
                     message=f"task {handle.id} ({reason}): its agent ({handle.spec.agent}) "
                             f"did not stop within {self.grace_s:g} s; the run stops waiting "
                             "for it")
        handle.status = status
        handle.reason = f"{reason} (its agent did not stop)"
        self._given_up[handle.id] = (status, handle.reason)
        handle.abort, handle.cancel_scope = None, None
        self._release(handle)
        self._group().abandon(scope)
        await self._end(handle)
