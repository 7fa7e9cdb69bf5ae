"""The task group the run's tasks start in: a lean task per agent on asyncio (R7.1).

anyio (4.14 and later) gives every task a task group starts a handle with a cancel scope
and an event of its own: about 2 KiB beside the asyncio task, held by each of the
thousands of agents a run keeps waiting for a lease.  On asyncio the run's tasks are
therefore plain asyncio tasks, each inside one anyio cancel scope that the group cancels
them through, so shields hold as in an anyio task group (a cancelled task's shielded
clean-up returns its leases and records how it ended).  On any other backend (trio on
virtual time in tests) it is anyio's own task group.

:meth:`Spawner.start_scoped` hands the task its scope, to enter itself around all it
does: an agent's task ends its attempt through the same scope (an abort, its time
budget), so a waiting agent holds one scope, not two (a scope with its two sets is about
0.6 KiB), and no wrapping coroutine.  The group learns how such a task ended from the
task's done callback.

A task the run cancelled (or aborted) that is still running ``grace_s`` later -- an agent
that catches the cancellation and goes on -- is not waited for on asyncio: the group
hands its scope to ``on_straggler`` (which records how its task ended) and lets it go
(:meth:`_LeanGroup.abandon`): it leaves the loop's task registry, so neither the group
nor ``asyncio.run``'s final clean-up waits for it.  anyio's task group (other backends)
cannot let a task go: it still waits.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc

from scheduler.core import AsyncioCancelScope as _AsyncioCancelScope
from scheduler.core import on_asyncio
from scheduler.core import shield as shield  # the orchestrator's, with the group's


class Spawner(Protocol):
    """What the orchestrator needs of a task group: start a task (``TaskGroup.start_soon``)."""

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object: ...

    def start_scoped(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
        """Start ``func(scope, *args)``: ``scope`` is the task's own cancel scope, which
        ``func`` enters around all it does (the group cancels the task through it; the task
        may cancel it too)."""
        ...

    def abandon(self, scope: anyio.CancelScope) -> bool:
        """Stop waiting for the task running in ``scope`` (see the module); False when
        this group cannot (anyio's) or has no such task."""
        ...


#: Called with the scope of each task still running ``grace_s`` after the group
#: cancelled it, once the group let it go.
OnStraggler = Callable[[anyio.CancelScope], Awaitable[None]]


async def _no_straggler(scope: anyio.CancelScope) -> None:
    return None


@asynccontextmanager
async def task_group(grace_s: float = math.inf,
                     on_straggler: OnStraggler = _no_straggler) -> AsyncIterator[Spawner]:
    """A task group: on exit it waits for its tasks; an exception of one cancels the
    others and is raised in an exception group, as anyio's task group does.  Once
    cancelled, it waits ``grace_s`` for its tasks (on asyncio; see the module)."""
    if not on_asyncio():
        async with anyio.create_task_group() as tg:
            yield _ScopedGroup(tg)
        return
    group = _LeanGroup(grace_s, on_straggler)
    try:
        yield group
    except BaseException:
        group.cancel()
        with anyio.CancelScope(shield=True):
            await group.join()
        raise
    await group.join()


class _Members(list[Any]):
    """The set operations anyio's asyncio cancel scope does on its task and child-scope
    sets, on a list: a task's scope holds one task and seldom a child, and an empty
    ``set`` takes 216 bytes, this 56 (88 with a member)."""

    __slots__ = ()

    def add(self, item: Any) -> None:
        if item not in self:
            self.append(item)

    def discard(self, item: Any) -> None:
        if item in self:
            list.remove(self, item)

    def remove(self, item: Any) -> None:
        try:
            list.remove(self, item)
        except ValueError:
            raise KeyError(item) from None


class _TaskScope(_AsyncioCancelScope):
    """A task's own cancel scope (see :meth:`Spawner.start_scoped`) with its two sets as
    :class:`_Members`: about 0.25 KiB less for each of the thousands of waiting agents."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self._child_scopes = _Members()  # type: ignore[assignment]
        self._tasks = _Members()  # type: ignore[assignment]


#: anyio's asyncio scope keeps its tasks and child scopes in these slots (4.x): any other
#: layout gets anyio's own scope.
_MEMBER_SLOTS = {"_child_scopes", "_tasks"} <= set(getattr(_AsyncioCancelScope, "__slots__", ()))



def _task_scope() -> anyio.CancelScope:
    return _TaskScope() if _MEMBER_SLOTS else anyio.CancelScope()


class _LeanGroup:
    """Plain asyncio tasks, each inside a cancel scope of its own (see the module)."""

    __slots__ = ("_cancelled", "_children", "_errors", "_grace_s", "_on_done",
                 "_on_straggler", "_wake")

    def __init__(self, grace_s: float = math.inf,
                 on_straggler: OnStraggler = _no_straggler) -> None:
        #: The running tasks (the event loop holds only weak references) and their scopes.
        self._children: dict[asyncio.Task[None], anyio.CancelScope] = {}
        self._errors: list[Exception] = []
        self._cancelled = False
        self._wake: anyio.Event | None = None
        self._on_done = self._done  # one bound method for every task's done callback
        self._grace_s = grace_s
        self._on_straggler = on_straggler

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
        scope = anyio.CancelScope()
        # the coroutine made here: the running task holds neither ``func`` nor ``args``
        return self._start(scope, self._run(scope, func(*args)))

    def start_scoped(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
        # no wrapping coroutine: ``func`` enters the scope, ``_done`` sees how it ended
        scope = _task_scope()
        return self._start(scope, func(scope, *args))

    def _start(self, scope: anyio.CancelScope, coro: Coroutine[Any, Any, Any]) -> object:
        if self._cancelled:
            scope.cancel()  # as in a cancelled anyio group: cancelled at its first await
        task = asyncio.get_running_loop().create_task(coro)
        self._children[task] = scope
        task.add_done_callback(self._on_done)
        return task

    @staticmethod
    async def _run(scope: anyio.CancelScope, coro: Awaitable[Any]) -> None:
        with scope:
            await coro

    def _done(self, task: asyncio.Task[None]) -> None:
        del self._children[task]
        if task.cancelled():
            self.cancel()
        elif (exc := task.exception()) is not None:
            if isinstance(exc, Exception):
                self._errors.append(exc)
            self.cancel()
        if not self._children and self._wake is not None:
            self._wake.set()

    def cancel(self) -> None:
        """Cancel every task of the group, and those it starts from now on."""
        self._cancelled = True
        for scope in self._children.values():
            scope.cancel()
        if self._wake is not None:  # join waits ``grace_s`` from now
            self._wake.set()

    def abandon(self, scope: anyio.CancelScope) -> bool:
        task = next((t for t, s in self._children.items() if s is scope), None)
        if task is None:
            return False
        del self._children[task]
        task.remove_done_callback(self._on_done)
        _let_go(task)
        if not self._children and self._wake is not None:
            self._wake.set()
        return True

    async def _wait(self, until_cancelled: bool = False) -> None:
        while self._children and not (until_cancelled and self._cancelled):
            self._wake = anyio.Event()
            await self._wake.wait()

    async def _settle(self) -> None:
        """Once cancelled: wait ``grace_s`` for the tasks, then let go of those left."""
        with anyio.move_on_after(self._grace_s):
            await self._wait()
        for scope in list(self._children.values()):
            if self.abandon(scope):
                await self._on_straggler(scope)

    async def join(self) -> None:
        """Wait until no task is left; a cancellation meanwhile cancels them first.  Once
        the group is cancelled, tasks still running ``grace_s`` later are let go."""
        try:
            await self._wait(until_cancelled=True)
        except anyio.get_cancelled_exc_class():
            self.cancel()
            with anyio.CancelScope(shield=True):
                await self._settle()
            raise
        finally:
            self._wake = None
        if self._children:  # the group was cancelled (a task's error)
            with anyio.CancelScope(shield=True):
                await self._settle()
            self._wake = None
        if self._errors:
            errors, self._errors = self._errors, []
            raise BaseExceptionGroup("unhandled errors in a task group", errors)


#: The tasks let go that have not ended: the loop holds its tasks weakly, and one whose
#: coroutine were collected would be closed -- running the agent's ``except`` again.
_LET_GO: set[asyncio.Task[Any]] = set()


def _let_go(task: asyncio.Task[Any]) -> None:
    """Out of the loop's registry (``asyncio.all_tasks``, which ``asyncio.run`` cancels
    and waits for as it ends); its end, if it ever comes, is nobody's to report."""
    unregister = getattr(asyncio.tasks, "_unregister_task", None)
    if unregister is not None:
        unregister(task)
    _LET_GO.add(task)
    task.add_done_callback(_gone)
    task._log_destroy_pending = False  # type: ignore[attr-defined]


def _gone(task: asyncio.Task[Any]) -> None:
    _LET_GO.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: asyncio logs no "exception never retrieved"


class _ScopedGroup:
    """anyio's task group with :meth:`Spawner.start_scoped` (backends other than asyncio)."""

    __slots__ = ("_tg",)

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
        return self._tg.start_soon(func, *args)

    def start_scoped(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
        return self._tg.start_soon(func, anyio.CancelScope(), *args)

    def abandon(self, scope: anyio.CancelScope) -> bool:
        return False  # anyio's task group waits for every task


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the backend's cancellation, or a group holding one (an agent's
    task group: one task's clean-up raised, or one got a ``finish`` decision, while the
    abort cancelled the others) -- which an unhandled group would take the run down with."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(cancelled)[0] is not None
    return isinstance(exc, cancelled)
