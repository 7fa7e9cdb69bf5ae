"""The shielded scope a settled model call's usage is recorded under, on asyncio.

Every governed call enters one (the provider answered: the usage is recorded even if the
task is cancelled meanwhile).  anyio's asyncio scope, on entering and leaving, looks the
task up twice in Python (``asyncio.current_task`` on 3.11 and a ``WeakKeyDictionary``),
checks that it is entered once, in its task, innermost -- what a scope made and left
around one block cannot get wrong -- and arms its deadline: about 2 µs a call, half of
it those steps.  :class:`LeanShield` takes the same steps on anyio's own records (the
task's ``TaskState.cancel_scope``; the parent scope's child scopes and tasks) without
them and, leaving, restarts a cancellation it held back as anyio does
(``_restart_cancellation_in_parent``).  Whatever is not the plain case (a task anyio has
no state for, a scope cancelled itself or holding uncancellations) takes anyio's own
steps, and so does every shield when anyio's layout is not the one known here.
"""

from __future__ import annotations

import asyncio
from asyncio import _get_running_loop
from math import inf
from types import TracebackType
from typing import Any
from weakref import ref

import anyio

try:  # anyio's asyncio scope and task records are private: checked below
    from anyio._backends._asyncio import CancelScope as _AsyncioCancelScope
    from anyio._backends._asyncio import TaskState, _task_states
except ImportError:  # pragma: no cover - depends on the installed anyio
    _AsyncioCancelScope = anyio.CancelScope  # type: ignore[misc,assignment]
    _task_states = TaskState = None  # type: ignore[assignment,misc]

#: The running task of each loop (what ``asyncio.current_task`` reads on 3.11, in C).
_CURRENT: dict[Any, asyncio.Task[Any]] | None = getattr(asyncio.tasks, "_current_tasks", None)
#: The task states by weak reference (``WeakKeyDictionary.data``).
_STATES: dict[Any, Any] | None = getattr(_task_states, "data", None)
_SLOTS = {"_active", "_cancel_called", "_cancelling_at_enter", "_child_scopes", "_deadline",
          "_host_task", "_parent_scope", "_pending_uncancellations", "_tasks",
          "_timeout_handle"}
#: anyio's layout as known here: else every shield is anyio's own scope.
LEAN = (isinstance(_CURRENT, dict) and isinstance(_STATES, dict)
        and "cancel_scope" in getattr(TaskState, "__slots__", ())
        and _SLOTS.issubset(getattr(_AsyncioCancelScope, "__slots__", ()))
        and hasattr(_AsyncioCancelScope, "_restart_cancellation_in_parent"))


class LeanShield(_AsyncioCancelScope):
    """``anyio.CancelScope(shield=True)`` on asyncio, entered and left in fewer steps."""

    __slots__ = ()

    def __enter__(self) -> LeanShield:
        loop = _get_running_loop()
        host = _CURRENT.get(loop) if loop is not None else None  # type: ignore[union-attr]
        state = _STATES.get(ref(host)) if host is not None else None  # type: ignore[union-attr]
        if state is None or self._active or self._cancel_called or self._deadline != inf:
            return super().__enter__()
        assert host is not None  # it has a state
        self._host_task = host
        self._tasks.add(host)
        parent = self._parent_scope = state.cancel_scope
        state.cancel_scope = self
        if parent is not None:
            children, tasks = parent._child_scopes, parent._tasks
            if isinstance(children, list) and isinstance(tasks, list):
                # a task's own scope keeps them in lists (``_spawn._Members``): their set
                # steps in C, the new scope not among its children yet
                list.append(children, self)
                if host in tasks:
                    list.remove(tasks, host)
            else:
                children.add(self)
                tasks.discard(host)
        self._active = True  # no deadline to arm
        self._cancelling_at_enter = host.cancelling()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> bool:
        host = self._host_task
        state = _STATES.get(ref(host)) if host is not None else None  # type: ignore[union-attr]
        if (state is None or state.cancel_scope is not self or not self._active
                or self._cancel_called or self._pending_uncancellations
                or self._timeout_handle is not None):
            return bool(super().__exit__(exc_type, exc_val, exc_tb))
        # anyio's steps for a scope not cancelled itself: it lets every exception through
        self._active = False
        self._tasks.remove(host)
        parent = self._parent_scope
        if parent is not None:
            children, tasks = parent._child_scopes, parent._tasks
            if isinstance(children, list) and isinstance(tasks, list):  # as on entering
                list.remove(children, self)
                if host not in tasks:
                    list.append(tasks, host)
            else:
                children.remove(self)
                tasks.add(host)
        state.cancel_scope = parent
        self._restart_cancellation_in_parent()
        self._host_task = None
        return False


def shield() -> anyio.CancelScope:
    """``anyio.CancelScope(shield=True)``: on asyncio a :class:`LeanShield` (or anyio's
    asyncio scope, made without anyio's look-up of the running backend)."""
    if _get_running_loop() is not None:
        return LeanShield(shield=True) if LEAN else _AsyncioCancelScope(shield=True)
    return anyio.CancelScope(shield=True)
