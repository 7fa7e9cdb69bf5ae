"""The readable per-task usage file, ``<state_dir>/tasks/<id>/usage.json`` (R2.6).

Written atomically (a temporary file, then a rename) when a task finishes, and
while it runs at most once per interval, or at once when a charge crossed a
threshold.  Without a state directory nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler.budget._scopes import TaskEntry
from scheduler.core import WallClock, private_dir, write_private


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
        private_dir(folder)
        return write_private(folder / "usage.json",
                             json.dumps(self.document(task_id, entry), indent=2))

    def after_charge(self, task_id: str, entry: TaskEntry, *, crossed: bool) -> None:
        """Rewrite the file when the interval has passed since the last write, or ``crossed``."""
        if self._state_dir is None:
            return
        now = self._clock()
        if crossed or now - entry.usage_written_at >= self._interval_s:
            entry.usage_written_at = now
            self.write(task_id, entry)
