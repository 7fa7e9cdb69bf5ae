"""The readable per-task usage file, ``<state_dir>/tasks/<id>/usage.json`` (R2.6).

Written atomically (a temporary file, then a rename) when a task pauses or
finishes and when the run ends — so what offline ``status`` and ``decide`` read
is current then — and while it runs at most once per interval (counted from the
task's first charge, so a short task's file is written once, at its end), or at
once when a charge crossed a threshold.  At the run's end only files older than
their task's last charge are rewritten.  On asyncio the write at a task's end
runs in a worker thread (a rename on a busy disk takes milliseconds the event
loop would otherwise wait; the files of tasks ending meanwhile share the hop), and
it is done before the task counts as ended.
Without a state directory nothing is written.
A file that cannot be written (disk full, a task id too long for a file name)
while the task runs is retried at its next charge (a warning is logged); at the
task's end it raises :class:`~scheduler.core.LocalFileError`, which fails that
task alone.  The usage itself is in the store already and stays there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scheduler.budget._scopes import TaskEntry
from scheduler.core import (
    GroupCommit,
    LocalFileError,
    WallClock,
    get_logger,
    off_loop,
    private_dir,
    remove_file,
    write_private,
)

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
        # files of tasks ending together are written in one worker-thread hop
        self._batch: GroupCommit[_Entry, Path] = GroupCommit(_write_all)

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
            **_day_budget(task_id, entry),
        }

    def write(self, task_id: str, entry: TaskEntry) -> Path | None:
        """Write ``<state_dir>/tasks/<task_id>/usage.json`` atomically."""
        if self._state_dir is None:
            return None
        path = _write(self._state_dir / "tasks" / task_id, self.document(task_id, entry))
        entry.usage_written_at, entry.usage_dirty = self._clock(), False
        return path

    async def write_off_loop(self, task_id: str, entry: TaskEntry,
                             beside: Mapping[str, Any] | None = None) -> Path | None:
        """:meth:`write`, the file system's part in a worker thread on asyncio (on other
        loops -- trio on virtual time in tests -- in line, as the SQLite store does).
        ``beside``: other documents of the task's folder by file name (its
        ``result.json`` at its end), written after ``usage.json`` in the same hop, and
        only if it was (``None``: the file is removed); a failure to write one of them
        is logged, not raised."""
        if self._state_dir is None:
            return None
        doc = self.document(task_id, entry)  # as of now: charges meanwhile mark it dirty
        entry.usage_written_at, entry.usage_dirty = self._clock(), False
        folder = self._state_dir / "tasks" / task_id
        try:
            return await self._batch.submit((folder, doc, beside))
        except BaseException:
            entry.usage_dirty = True
            raise

    def after_charge(self, task_id: str, entry: TaskEntry, *, crossed: bool) -> bool:
        """Whether the file is due for a rewrite: the interval has passed since the last
        write (or since the task's first charge), or ``crossed``."""
        entry.usage_dirty = True
        if self._state_dir is None:
            return False
        now = self._clock()
        if not crossed and not entry.usage_charged:
            # the interval counts from the first charge, not from the start: a task that
            # waited in the queue longer than the interval does not rewrite at its first call
            entry.usage_charged, entry.usage_written_at = True, now
            return False
        entry.usage_charged = True
        return crossed or now - entry.usage_written_at >= self._interval_s

    async def try_write_off_loop(self, task_id: str, entry: TaskEntry) -> None:
        """:meth:`write_off_loop`, or a warning when it fails (retried at the next charge)."""
        try:
            await self.write_off_loop(task_id, entry)
        except LocalFileError as exc:
            _log.warning("usage_file_unwritten", task_id=task_id, error=str(exc))

    def try_write(self, task_id: str, entry: TaskEntry) -> None:
        """:meth:`write`, or a warning when it fails (retried at the next charge)."""
        try:
            self.write(task_id, entry)
        except LocalFileError as exc:
            _log.warning("usage_file_unwritten", task_id=task_id, error=str(exc))


#: A task's folder, its ``usage.json`` document and the documents to write beside it.
_Entry = tuple[Path, dict[str, Any], Mapping[str, Any] | None]


async def _write_all(batch: list[_Entry]) -> list[Path | Exception]:
    """Each file of ``batch`` (one worker-thread hop); a failure fails its own write only."""
    def write_all() -> list[Path | Exception]:
        out: list[Path | Exception] = []
        for folder, doc, beside in batch:
            try:
                out.append(_write(folder, doc))
            except LocalFileError as exc:
                out.append(exc)
                continue
            for name, other in (beside or {}).items():
                _write_beside(folder / name, other)
        return out

    return await off_loop(write_all)


def _write(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / "usage.json"
    try:
        private_dir(folder)
        write_private(path, json.dumps(doc, indent=2))
    except OSError as exc:
        raise LocalFileError(path, exc.strerror or str(exc)) from exc
    return path


def _day_budget(task_id: str, entry: TaskEntry) -> dict[str, Any]:
    """The task's per-day budget as of its file's day (budget people added included)."""
    day = entry.day_scope
    if entry.day_root != task_id or day is None:
        return {}
    return {"day_budget": {"scope": day.name,
                           "budget": day.limits.model_dump(mode="json", exclude_none=True)}}


def _write_beside(path: Path, doc: Any) -> None:
    try:
        if doc is None:
            remove_file(path)
        else:
            write_private(path, json.dumps(doc, indent=2))
    except OSError as exc:  # what it holds is in the store; the file is a convenience
        _log.warning("task_file_failed", path=str(path), error=str(exc))
