"""Hooks: the one way a part lets others react to what it does.

A part names each point ``on_<what happened>`` and holds a :class:`Hook` (plain
callbacks) or an :class:`AsyncHook` (awaited in order); the composition root
connects them.  An empty hook is the null object: calling it does nothing, so the
hot path never tests for a missing listener.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, ParamSpec

P = ParamSpec("P")


class Hook(Generic[P]):
    """Synchronous listeners, called in the order they were connected."""

    __slots__ = ("listeners",)

    def __init__(self) -> None:
        #: The listeners, in order (read only): a hot path calls them without the hook's
        #: own frame.
        self.listeners: tuple[Callable[P, object], ...] = ()

    def connect(self, listener: Callable[P, object]) -> Callable[P, object]:
        self.listeners = (*self.listeners, listener)
        return listener

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for listener in self.listeners:
            listener(*args, **kwargs)

    def __bool__(self) -> bool:
        return bool(self.listeners)


class AsyncHook(Generic[P]):
    """Asynchronous listeners, awaited one after the other in the order connected."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: tuple[Callable[P, Awaitable[object]], ...] = ()

    def connect(
        self, listener: Callable[P, Awaitable[object]]
    ) -> Callable[P, Awaitable[object]]:
        self._listeners = (*self._listeners, listener)
        return listener

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for listener in self._listeners:
            await listener(*args, **kwargs)

    def __bool__(self) -> bool:
        return bool(self._listeners)
