"""A run's session: its records in the store, the agents' results, and the lock that
keeps one orchestrator per state directory.

``vibe-engine run`` starts a new session; an orchestrator given the id of an
existing session (``vibe-engine resume``) continues it: tasks that completed
(or were saved and finished) keep their status and result and are not run
again, the others run (an interrupted or failed one from its checkpoint, a
paused one still paused).  The records themselves
are described in :mod:`scheduler.store._records`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import zlib
from dataclasses import fields
from pathlib import Path
from typing import Any

from scheduler.config import VibeConfig
from scheduler.core import (
    GroupCommit,
    ResultError,
    SessionError,
    StoreUnavailableError,
    WallClock,
    get_logger,
    member_gone,
    off_loop,
    private_dir,
    private_file,
    process_start,
    remove_file,
    this_host,
    write_private,
)
from scheduler.observe import put_states
from scheduler.store import SessionRecord, Store, task_key, task_of_key
from scheduler.tasks import TaskHandle, TaskStatus

_log = get_logger("vibe_engine.session")

#: The largest result kept with a task, as JSON (a result is a summary, not a payload).
MAX_RESULT_BYTES = 256 * 1024
LOCK_NAME = "orchestrator.lock"


def encode_result(task_id: str, result: Any) -> Any:
    """``result`` as the JSON value stored with the task; :class:`ResultError` when it is
    not JSON-serialisable or larger than :data:`MAX_RESULT_BYTES`."""
    if result is None:  # most agents return nothing: no encoding round trip per task
        return None
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultError(task_id, f"not JSON-serialisable ({exc})") from None
    size = len(text.encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        raise ResultError(task_id, f"{size:,} bytes as JSON, over the "
                                   f"{MAX_RESULT_BYTES:,}-byte cap")
    return json.loads(text)


class StateDirLock:
    """An exclusive ``flock`` on ``<state_dir>/orchestrator.lock`` for the whole run.

    The kernel drops the lock when the process dies, even by SIGKILL, so a
    killed run never leaves the directory locked.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None
        #: The folders (state directory first) and the lock file that taking the lock
        #: made: a run that then cannot start removes them (a refusal writes nothing).
        self._made: list[Path] = []

    def acquire_nowait(self) -> None:
        """Take the lock, or raise :class:`SessionError` naming the running process."""
        if self._fd is not None:
            return
        made = _missing(self.path)
        try:
            private_dir(self.path.parent)
            fd = os.open(private_file(self.path), os.O_RDWR)
        except OSError as exc:
            raise SessionError(f"cannot lock state directory {self.path.parent}: {exc}",
                               state_dir=str(self.path.parent)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _still_named(fd, self.path):  # a refused start removed it meanwhile
                raise BlockingIOError
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise SessionError(
                f"state directory {self.path.parent} is in use by another orchestrator "
                f"(pid {pid if pid else 'unknown'}); one orchestrator per state directory",
                state_dir=str(self.path.parent), pid=pid,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self._made = fd, made

    def release(self, *, undo: bool = False) -> None:
        """Drop the lock; ``undo``: the run could not start, so also remove the lock file
        and the folders taking it made, while they hold nothing else."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                if undo:  # unlinked while locked: see _still_named
                    for path in self._made:
                        path.unlink() if path == self.path else path.rmdir()
            os.close(fd)  # closing drops the flock


def _missing(lock: Path) -> list[Path]:
    """``lock`` and its folders that do not exist yet, innermost first."""
    out: list[Path] = []
    path = lock
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file ``fd`` locked: another process may have
    opened the lock file just before a refused start removed it."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


class SessionLog:
    """Writes the session's record and its tasks' records (state and result)."""

    def __init__(self, store: Store, config: VibeConfig, *, session_id: str,
                 wall: WallClock) -> None:
        self.store = store
        self.config = config
        self.session_id = session_id
        self.wall = wall
        self.state_dir = os.path.realpath(config.state_dir)
        self.record = SessionRecord(session_id)
        #: The store knew the session (``begin`` found its record): a continued session.
        self.continued = True
        self._config_text = b""
        # results of tasks ending together are written in one worker-thread hop
        self._results: GroupCommit[tuple[str, Any], None] = GroupCommit(self._write_results)

    async def begin(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Mark the session running; return its earlier task records (empty when new)."""
        stored = await self.store.get_state("session", self.session_id)
        record = SessionRecord.from_dict(stored) if stored else SessionRecord(
            self.session_id, started=self.wall.now().isoformat())
        # the orchestrators already running it stay members: it runs while one does (a
        # record written before members were kept names its one orchestrator)
        host, pid = this_host(), os.getpid()
        me: list[Any] = [host, pid, process_start(pid)]
        earlier = record.members or ([[record.host, record.pid, record.proc_start]]
                                     if record.pid else [])
        record.members = [*(m for m in earlier if record.state == "running"
                            and m != me and not member_gone(m)), me]
        record.state, record.ended = "running", ""
        record.host, record.pid, record.proc_start = host, pid, me[2]
        record.state_dir = self.state_dir
        record.tasks = list(dict.fromkeys([*record.tasks, *task_ids]))
        record.config = self.config.model_dump(mode="json")
        self.record = record
        await self.store.put_state("session", self.session_id, _record_dict(record))
        # held as compressed text until end() writes the record again: the config of a run
        # of 10,000 tasks lists them all (a few hundred bytes each as dicts, a tenth of
        # that as text, and a few bytes compressed: its tasks differ only in their ids)
        self._config_text = zlib.compress(json.dumps(record.config).encode(), 1)
        record.config = {}
        self.continued = stored is not None
        if stored is None:
            return {}
        return {task_of_key(k)[1]: v for k, v in (await self.store.list_state("task")).items()
                if task_of_key(k)[0] == self.session_id}

    async def end(self, *, interrupted: bool) -> None:
        """Mark the session ended -- unless another orchestrator still runs it: the record
        is read again, so the members and tasks it gained since ``begin`` are kept.  A store
        that cannot be read now (Redis down as the run ends) gets this process's own view:
        its write waits in the spool with the tasks' records, applied at the next start."""
        try:
            others, tasks, state_dir = await self._still_running()
        except StoreUnavailableError as exc:
            _log.info("session_record_unread", session_id=self.session_id, error=str(exc))
            others, tasks, state_dir = [], [], ""
        record = self.record
        record.tasks = list(dict.fromkeys([*tasks, *record.tasks]))
        record.members = others
        if others:  # the record names one of those still running it, and where it runs
            record.host, record.pid, record.proc_start = others[-1]
            record.state_dir = state_dir or record.state_dir
        else:
            record.state = "interrupted" if interrupted else "completed"
            record.ended = self.wall.now().isoformat()
        config = (json.loads(zlib.decompress(self._config_text)) if self._config_text
                  else record.config)
        await self.store.put_state("session", self.session_id, _record_dict(record, config))

    async def _still_running(self) -> tuple[list[list[Any]], list[str], str]:
        """The other orchestrators running the session now, its tasks and its state
        directory (the record read again, only these kept: its config lists every task
        of a large run)."""
        stored = await self.store.get_state("session", self.session_id)
        if stored is None:
            return [], [], ""
        me = [this_host(), os.getpid(), self.record.proc_start]
        members = (stored.get("members") or []) if stored.get("state") == "running" else []
        return ([m for m in members if m != me and not member_gone(m)],
                list(stored.get("tasks") or []), str(stored.get("state_dir") or ""))

    async def save_task(self, handle: TaskHandle, result: Any = None) -> None:
        await self.store.put_state("task", task_key(self.session_id, handle.id),
                                   self.task_record(handle, result))

    async def save_tasks(self, handles: list[TaskHandle]) -> None:
        """:meth:`save_task` of every handle, a few commits for them all."""
        await put_states(self.store, "task", [
            (task_key(self.session_id, h.id), self.task_record(h, None)) for h in handles])

    def task_record(self, handle: TaskHandle, result: Any) -> dict[str, Any]:
        return {
            "task_id": handle.id,
            "session_id": self.session_id,
            "agent": handle.spec.agent,
            "status": handle.status,
            "reason": handle.reason,
            "attempts": handle.attempt,
            "priority": handle.spec.priority,
            "task_type": handle.profile.task_type,
            "complexity": handle.profile.complexity,
            "model": handle.model,
            "calls": handle.calls,
            "split_from": handle.split_from,
            "result": result,
        }

    def result_document(self, task_id: str, result: Any) -> dict[str, Any] | None:
        """What ``result.json`` holds; ``None`` (no file) when the agent returned nothing:
        nothing reads a file of ``null``, and it would cost a task one more file."""
        if result is None:
            return None
        return {"task_id": task_id, "session_id": self.session_id, "result": result}

    def write_result(self, task_id: str, result: Any) -> None:
        """``<state_dir>/tasks/<id>/result.json`` beside ``usage.json`` (atomically); a
        result of ``None`` removes the file an earlier session's run of the task left."""
        folder = Path(self.config.state_dir) / "tasks" / task_id
        doc = self.result_document(task_id, result)
        try:
            if doc is None:
                remove_file(folder / "result.json")
                return
            private_dir(folder)
            write_private(folder / "result.json", json.dumps(doc, indent=2))
        except OSError as exc:  # the result is in the store; the file is a convenience
            _log.warning("result_file_failed", task_id=task_id, error=str(exc))

    async def write_result_off_loop(self, task_id: str, result: Any) -> None:
        """:meth:`write_result` in a worker thread on asyncio (a rename on a busy disk
        takes milliseconds); in line on other loops (trio on virtual time in tests).
        Results of tasks ending meanwhile share the thread hop; each returns once its
        own file is written."""
        await self._results.submit((task_id, result))

    async def _write_results(self, batch: list[tuple[str, Any]]) -> list[Exception | None]:
        def write_all() -> list[Exception | None]:
            for task_id, result in batch:
                self.write_result(task_id, result)  # logs its own failure
            return [None] * len(batch)

        return await off_loop(write_all)


def _record_dict(record: SessionRecord, config: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """``record.to_dict()`` (with ``config`` in place of its own) without ``asdict``'s
    deep copy of the config: a run of N tasks would copy N task specs each time."""
    out = {f.name: getattr(record, f.name) for f in fields(record)}
    out["tasks"] = list(record.tasks)
    if config is not None:
        out["config"] = config
    return out


#: Ends a continued session keeps; a failed task runs again (from its checkpoint).
_KEPT = frozenset({TaskStatus.COMPLETED, TaskStatus.FINISHED})


def restore(handle: TaskHandle, record: dict[str, Any]) -> bool:
    """Give ``handle`` the state an earlier run of its session recorded; True when the
    task completed or was saved and finished there (it is not run again)."""
    try:
        status = TaskStatus(str(record.get("status", "pending")))
    except ValueError:
        return False
    handle.attempt = int(record.get("attempts", handle.attempt))
    handle.model = str(record.get("model", ""))
    if status not in _KEPT:
        return False
    handle.status, handle.reason = status, str(record.get("reason", ""))
    handle.result = record.get("result")
    handle.calls = int(record.get("calls", 0))
    return True
