"""The readable per-task usage file, ``<state_dir>/tasks/<id>/usage.json`` (R2.6).

Written atomically (a temporary file, then a rename) when a task pauses or
finishes and when the run ends -- so what offline ``status`` and ``decide`` read
is current then -- at once when a charge crossed a threshold, and while tasks
run by one periodic job (:meth:`UsageFiles.flush_dirty`, the tracker's
``flush_usage`` service): every interval, the files of the running tasks charged
since their last write and written (or first charged) an interval ago or more, in
hops of a bounded number of files (after a slow flush the job waits 20 times as long as it
took: see ``Tracker.flush_usage``) -- so a task shorter than the interval writes its
file once, when it ends.  A charge itself only marks its task's file dirty: with
thousands of agents a rewrite per charge (a JSON document, a rename) cost more
than the call it recorded.  At the run's end
only files older than their task's last charge are rewritten.  On asyncio the
writes run in a worker thread (a rename on a busy disk takes milliseconds the
event loop would otherwise wait), one batch at a time and in the order asked
(a task's final file is never overtaken by an older one), and the write at a
task's end is done before the task counts as ended.
Without a state directory nothing is written.
A file that cannot be written (disk full, a task id too long for a file name)
while the task runs is retried at the next flush (a warning is logged); at the
task's end it raises :class:`~scheduler.core.LocalFileError`, which fails that
task alone.  The usage itself is in the store already and stays there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from scheduler.budget._scopes import TaskEntry
from scheduler.config import Limits
from scheduler.core import (
    GroupCommit,
    LocalFileError,
    WallClock,
    get_logger,
    make_private_dir,
    off_loop,
    remove_file,
    umask_keeps_owner,
    write_private,
)

_log = get_logger("vibe_engine.budget")

#: Files per worker-thread hop of a flush: their texts are made as the hop is asked
#: for, so a flush of 10,000 running tasks' files holds this many at once, not all.
FLUSH_CHUNK = 128


class UsageFiles:
    """Writes each task's ``usage.json`` under ``state_dir`` (nothing when it is ``None``)."""

    def __init__(
        self, state_dir: Path | None, *, session_id: str, wall: WallClock,
        clock: Callable[[], float], interval_s: float,
    ) -> None:
        self._state_dir = state_dir
        self._tasks_dir = Path(state_dir or ".") / "tasks"  # read only with a state_dir
        self._session_id = session_id
        self._session_json = _string(session_id)
        self._wall = wall
        self._clock = clock
        self._interval_s = interval_s
        # files of tasks ending together (and each flush's files) share a worker-thread
        # hop; one hop at a time, in the order asked
        self._batch: GroupCommit[_Files, list[Path | Exception]] = GroupCommit(_write_all)
        # tasks whose file was written in line while a flush's hop was under way: that
        # hop's older document may land after it.  A write through the batch cannot be
        # overtaken (hops run in the order asked), so only these need the next flush.
        self._flushing = 0
        self._inline_during_flush: set[str] = set()

    def _folder(self, task_id: str) -> Path:
        return self._tasks_dir / task_id

    @property
    def interval_s(self) -> float:
        """Seconds between two flushes of the running tasks' dirty files."""
        return self._interval_s

    def text(self, task_id: str, entry: TaskEntry) -> str:
        """``usage.json``'s text: JSON, one top-level key per line (nested objects on their
        key's line), in one template whose budget part is encoded once per limits object
        (most tasks share their type's and complexity's), not as a pydantic dump, a dict
        and a line per key per file.  ``json.dumps(indent=...)`` would take the pure-Python
        encoder, about five times slower, holding the GIL the event loop needs."""
        profile, scope = entry.profile, entry.scope
        return (
            f'{{\n  "task_id": {_string(task_id)},\n  "session_id": {self._session_json},\n'
            f'  "agent": {_string(entry.agent)},\n'
            f'  "task_type": {_string(profile.task_type)},\n'
            f'  "complexity": {_string(profile.complexity)},\n'
            f'  "status": {_string(entry.status)},\n'
            f'  "usage": {_value(scope.totals.to_dict())},\n'
            f'  "budget": {_budget(scope.limits)},\n'
            f'  "timestamp": {_string(self._wall.now().isoformat())}'
            f'{_day_budget_text(task_id, entry)}\n}}\n')

    def write(self, task_id: str, entry: TaskEntry) -> Path | None:
        """Write ``<state_dir>/tasks/<task_id>/usage.json`` atomically."""
        if self._state_dir is None:
            return None
        path, _ = _write(self._folder(task_id), self.text(task_id, entry))
        entry.usage_written_at, entry.usage_dirty = self._clock(), False
        if self._flushing:
            self._inline_during_flush.add(task_id)
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
        # as of now (charges meanwhile mark it dirty), and as text: tasks ending together
        # wait for one hop, each holding its file's text instead of the document's dicts
        doc = self.text(task_id, entry)
        entry.usage_written_at, entry.usage_dirty = self._clock(), False
        try:
            (out,) = await self._batch.submit([(self._folder(task_id), doc, beside)])
        except BaseException:
            entry.usage_dirty = True
            raise
        if isinstance(out, Exception):
            entry.usage_dirty = True
            raise out
        return out

    def after_charge(self, task_id: str, entry: TaskEntry, *, crossed: bool) -> bool:
        """Mark the file dirty (the next flush rewrites it); whether it is due at once:
        the charge ``crossed`` a threshold."""
        if not entry.usage_charged:
            # the interval counts from the first charge: a task shorter than it writes its
            # file once, when it ends (a flush would add a write per task to short runs)
            entry.usage_charged, entry.usage_written_at = True, self._clock()
        entry.usage_dirty = True
        return crossed and self._state_dir is not None

    async def flush_dirty(self, entries: Mapping[str, TaskEntry]) -> int:
        """Rewrite the files of the running tasks charged since their last write and
        written (or first charged) at least an interval ago, :data:`FLUSH_CHUNK` files per
        worker-thread hop, each file's text made as its hop is asked for (thousands of
        texts at once would be the run's peak of memory); returns how many were written.
        A file that cannot be written stays dirty (a warning is logged): the next flush
        tries again."""
        if self._state_dir is None:
            return 0
        since = self._clock() - self._interval_s
        due = [tid for tid, e in entries.items()
               if e.usage_dirty and e.usage_charged and e.status == "running"
               and e.usage_written_at <= since]
        written = 0
        for start in range(0, len(due), FLUSH_CHUNK):
            written += await self._flush(self._tasks_dir, entries, due[start:start + FLUSH_CHUNK])
        return written

    async def _flush(self, tasks: Path, entries: Mapping[str, TaskEntry],
                     ids: list[str]) -> int:
        """One hop of :meth:`flush_dirty`: the files of ``ids`` still due (a task that
        ended meanwhile had its file written at its end)."""
        now = self._clock()
        due: list[tuple[str, TaskEntry]] = []
        files: _Files = []
        for tid in ids:
            entry = entries.get(tid)
            if entry is None or not entry.usage_dirty or entry.status != "running":
                continue
            due.append((tid, entry))
            files.append((tasks / tid, self.text(tid, entry), None))
            entry.usage_written_at, entry.usage_dirty = now, False
        if not files:
            return 0
        self._flushing += 1
        try:
            outcomes = await self._batch.submit(files)
        except BaseException:
            for _, entry in due:
                entry.usage_dirty = True
            raise
        finally:
            self._flushing -= 1
            inline = self._inline_during_flush
            if not self._flushing:
                self._inline_during_flush = set()
        written = 0
        for (tid, entry), out in zip(due, outcomes, strict=True):
            if tid in inline:
                # written in line meanwhile (a pause): this hop's older document may
                # have landed last, so the next flush writes it again
                entry.usage_dirty = True
            if isinstance(out, Exception):
                entry.usage_dirty = True
                _log.warning("usage_file_unwritten", task_id=tid, error=str(out))
            else:
                written += 1
        return written

    async def try_write_off_loop(self, task_id: str, entry: TaskEntry) -> None:
        """:meth:`write_off_loop`, or a warning when it fails (the next flush retries it)."""
        try:
            await self.write_off_loop(task_id, entry)
        except LocalFileError as exc:
            _log.warning("usage_file_unwritten", task_id=task_id, error=str(exc))

    def try_write(self, task_id: str, entry: TaskEntry) -> None:
        """:meth:`write`, or a warning when it fails (the next flush retries it)."""
        try:
            self.write(task_id, entry)
        except LocalFileError as exc:
            _log.warning("usage_file_unwritten", task_id=task_id, error=str(exc))


#: One write of the batch: files, each a task folder, its ``usage.json`` text and the
#: documents to write beside it.
_Files = list[tuple[Path, str, Mapping[str, Any] | None]]


async def _write_all(batch: list[_Files]) -> list[list[Path | Exception] | Exception]:
    """Each file of ``batch`` (one worker-thread hop); a failure fails its own file only."""
    def write_all() -> list[list[Path | Exception] | Exception]:
        # once per hop: with the umask keeping the owner's bits, the modes given at
        # creation are the files' modes, and a task's end takes no chmod nor fchmod
        fix_mode = not umask_keeps_owner()
        out: list[list[Path | Exception] | Exception] = []
        for files in batch:
            done: list[Path | Exception] = []
            for folder, doc, beside in files:
                try:
                    path, new = _write(folder, doc, fix_mode=fix_mode)
                except LocalFileError as exc:
                    done.append(exc)
                    continue
                done.append(path)
                for name, other in (beside or {}).items():
                    if other is not None or not new:  # a new folder has nothing to remove
                        _write_beside(folder / name, other, fix_mode=fix_mode)
            out.append(done)
        return out

    return await off_loop(write_all)


def read_usage_file(path: Path) -> dict[str, Any] | None:
    """A ``usage.json`` as its JSON object; ``None`` when it is missing or unreadable, or
    holds anything but an object: the file is a copy of what the store holds, and a
    damaged one (a crash of the machine before the disk had it, a hand edit) must not
    stop ``status``, ``report`` or ``decide``, which then fall back to the config."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write(folder: Path, text: str, *, fix_mode: bool = True) -> tuple[Path, bool]:
    """Write the folder's ``usage.json``; its path, and True when the folder was made
    for it."""
    path = folder / "usage.json"
    try:
        new = make_private_dir(folder, fix_mode=fix_mode)
        write_private(path, text, fix_mode=fix_mode)
    except OSError as exc:
        raise LocalFileError(path, exc.strerror or str(exc)) from exc
    return path, new


#: What ``json.dumps`` does with its default options, without its per-call checks.
_string = encode_basestring_ascii
_value = json.JSONEncoder().encode


def _day_budget_text(task_id: str, entry: TaskEntry) -> str:
    """The task's per-day budget as of its file's day (budget people added included), as
    its ``usage.json`` line with the comma before; "" for a task without one."""
    day = entry.day_scope
    if entry.day_root != task_id or day is None:
        return ""
    return f',\n  "day_budget": {{"scope": {_string(day.name)}, "budget": {_budget(day.limits)}}}'


#: Limits as JSON by ``id``, each with its object (so its id is not reused while cached):
#: the shared base limits of a type and complexity are encoded once for all their tasks.
#: Limits are frozen; added budget makes a new object (``Scopes.raise_limits``).
_BUDGETS: dict[int, tuple[Limits, str]] = {}
_BUDGETS_KEPT = 256


def _budget(limits: Limits) -> str:
    """``limits`` as ``usage.json``'s ``budget`` value (what :func:`_value` makes of its
    JSON dump without the unset limits)."""
    found = _BUDGETS.get(id(limits))
    if found is not None and found[0] is limits:
        return found[1]
    text = _value(limits.model_dump(mode="json", exclude_none=True))
    if len(_BUDGETS) >= _BUDGETS_KEPT:  # tasks with limits of their own: not kept forever
        _BUDGETS.clear()
    _BUDGETS[id(limits)] = (limits, text)
    return text


def _write_beside(path: Path, doc: Any, *, fix_mode: bool = True) -> None:
    try:
        if doc is None:
            remove_file(path)
        else:
            write_private(path, json.dumps(doc, indent=2), fix_mode=fix_mode)
    except OSError as exc:  # what it holds is in the store; the file is a convenience
        _log.warning("task_file_failed", path=str(path), error=str(exc))
