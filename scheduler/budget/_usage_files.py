"""The readable per-task usage file, ``<state_dir>/tasks/<id>/usage.json`` (R2.6).

Written atomically (a temporary file, then a rename) when a task pauses or
finishes and when the run ends — so what offline ``status`` and ``decide`` read
is current then — and while it runs at most once per interval, or at once when
a charge crossed a threshold.  Without a state directory nothing is written.
A file that cannot be written (disk full, a task id too long for a file name)
while the task runs is retried at its next charge (a warning is logged); at the
task's end it raises :class:`~scheduler.core.LocalFileError`, which fails that
task alone.  The usage itself is in the store already and stays there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler.budget._scopes import TaskEntry
from scheduler.core import LocalFileError, WallClock, get_logger, private_dir, write_private

_log = get_logger("vibe_engine.budget")


class UsageFiles:
    """Writes each task's ``usage.json`` under ``state_dir`` (nothing when it is ``None``)."""

    def __init__(
        self, state_dir: Path | None, *, session_id: str, wall: WallClock,
        clock: Callable[[], float], interval_s: float,
    ) -> None:
        self._state_dir = state_dir
        self._session_id = session_id
        self._wall = wall
        self._clock = clock
        self._interval_s = interval_s

    def document(self, task_id: str, entry: TaskEntry) -> dict[str, Any]:
        return {
            "task_id": task_id,
            "session_id": self._session_id,
            "agent": entry.agent,
            "task_type": entry.profile.task_type,
            "complexity": entry.profile.complexity,
            "status": entry.status,
            "usage": entry.scope.totals.to_dict(),
            "budget": entry.scope.limits.model_dump(mode="json", exclude_none=True),
            "timestamp": self._wall.now().isoformat(),
        }

    def write(self, task_id: str, entry: TaskEntry) -> Path | None:
        """Write ``<state_dir>/tasks/<task_id>/usage.json`` atomically."""
        if self._state_dir is None:
            return None
        folder = self._state_dir / "tasks" / task_id
        path = folder / "usage.json"
        try:
            private_dir(folder)
            write_private(path, json.dumps(self.document(task_id, entry), indent=2))
        except OSError as exc:
            raise LocalFileError(path, exc.strerror or str(exc)) from exc
        entry.usage_written_at = self._clock()
        return path

    def after_charge(self, task_id: str, entry: TaskEntry, *, crossed: bool) -> None:
        """Rewrite the file when the interval has passed since the last write, or ``crossed``."""
        if self._state_dir is None:
            return
        now = self._clock()
        if crossed or now - entry.usage_written_at >= self._interval_s:
            self.try_write(task_id, entry)

    def try_write(self, task_id: str, entry: TaskEntry) -> None:
        """:meth:`write`, or a warning when it fails (retried at the next charge)."""
        try:
            self.write(task_id, entry)
        except LocalFileError as exc:
            _log.warning("usage_file_unwritten", task_id=task_id, error=str(exc))
