"""The small state types of :mod:`scheduler.control._pause`: a task's control and the
pause statistics."""

from __future__ import annotations

from dataclasses import dataclass

import anyio


@dataclass(frozen=True, slots=True)
class PauseStatistics:
    paused: tuple[str, ...]
    requested: tuple[str, ...]
    in_critical: dict[str, int]
    decisions_applied: int


@dataclass(slots=True)
class TaskControl:
    """One task's pause machinery: its critical sections, and the event a waiter wakes on."""

    critical: int = 0
    _changed: anyio.Event | None = None

    def changed(self) -> anyio.Event:
        """An event set at the next change (created lazily: needs a running loop)."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
