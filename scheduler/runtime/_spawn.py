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
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc

from scheduler.core import on_asyncio

try:  # anyio's asyncio scope is private: another anyio layout gets anyio's own scopes
    from anyio._backends._asyncio import CancelScope as _AsyncioCancelScope
except ImportError:  # pragma: no cover - depends on the installed anyio
    _AsyncioCancelScope = anyio.CancelScope  # type: ignore[misc,assignment]


class Spawner(Protocol):
    """What the orchestrator needs of a task group: start a task (``TaskGroup.start_soon``)."""

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object: ...

    def start_scoped(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
        """Start ``func(scope, *args)``: ``scope`` is the task's own cancel scope, which
        ``func`` enters around all it does (the group cancels the task through it; the task
        may cancel it too)."""
        ...


@asynccontextmanager
async def task_group() -> AsyncIterator[Spawner]:
    """A task group: on exit it waits for its tasks; an exception of one cancels the
    others and is raised in an exception group, as anyio's task group does."""
    if not on_asyncio():
        async with anyio.create_task_group() as tg:
            yield _ScopedGroup(tg)
        return
    group = _LeanGroup()
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


def shield() -> anyio.CancelScope:
    """``anyio.CancelScope(shield=True)``: on asyncio made as anyio's asyncio backend makes
    it, without anyio's look-up of the running backend (every settled model call enters
    one)."""
    if asyncio._get_running_loop() is not None:
        return _AsyncioCancelScope(shield=True)
    return anyio.CancelScope(shield=True)


def _task_scope() -> anyio.CancelScope:
    return _TaskScope() if _MEMBER_SLOTS else anyio.CancelScope()


class _LeanGroup:
    """Plain asyncio tasks, each inside a cancel scope of its own (see the module)."""

    __slots__ = ("_cancelled", "_children", "_errors", "_on_done", "_wake")

    def __init__(self) -> None:
        #: The running tasks (the event loop holds only weak references) and their scopes.
        self._children: dict[asyncio.Task[None], anyio.CancelScope] = {}
        self._errors: list[Exception] = []
        self._cancelled = False
        self._wake: anyio.Event | None = None
        self._on_done = self._done  # one bound method for every task's done callback

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

    async def join(self) -> None:
        """Wait until no task is left; a cancellation meanwhile cancels them first."""
        try:
            while self._children:
                self._wake = anyio.Event()
                await self._wake.wait()
        except anyio.get_cancelled_exc_class():
            self.cancel()
            with anyio.CancelScope(shield=True):
                await self.join()
            raise
        finally:
            self._wake = None
        if self._errors:
            errors, self._errors = self._errors, []
            raise BaseExceptionGroup("unhandled errors in a task group", errors)


class _ScopedGroup:
    """anyio's task group with :meth:`Spawner.start_scoped` (backends other than asyncio)."""

    __slots__ = ("_tg",)

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
        return self._tg.start_soon(func, *args)

    def start_scoped(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
        return self._tg.start_soon(func, anyio.CancelScope(), *args)


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the backend's cancellation, or a group holding one (an agent's
    task group: one task's clean-up raised, or one got a ``finish`` decision, while the
    abort cancelled the others) -- which an unhandled group would take the run down with."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(cancelled)[0] is not None
    return isinstance(exc, cancelled)
