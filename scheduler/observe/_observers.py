"""Observers every orchestrator carries: event history, ``status.json`` and metrics.

* :class:`HistoryRecorder` subscribes to the event bus and persists every
  event to the store as state kind ``history`` (keyed
  ``<session>:<seq>``, so several sessions never collide) — the alert and
  deadlock history of ``vibe-engine report``.
* :class:`StatusWriter` writes the orchestrator's
  :class:`~scheduler.observe._snapshot.Snapshot` to ``<state_dir>/status.json``
  whenever something changed, at most once per ``observe.status_interval_s``
  (atomically: write a temporary file, then rename), and a last one with
  ``running: false`` when the run ends, so ``vibe-engine status`` in another
  terminal sees the running orchestrator.
* :class:`~scheduler.observe._metrics.Metrics` (when ``metrics.enabled``) serves
  Prometheus metrics on a loopback port, and (``metrics.textfile``) writes them to a
  file for node_exporter when the run ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from scheduler.core import (
    ConfigError,
    Event,
    StoreError,
    VibeEngineError,
    get_logger,
    open_private,
    private_dir,
)
from scheduler.observe._view import Changes, RunView, watch_changes, write_status
from scheduler.store import Store

if TYPE_CHECKING:
    from scheduler.observe._metrics import Metrics

__all__ = ["HistoryRecorder", "Observers", "StatusWriter", "build_observers", "put_states",
           "status_path"]

_log = get_logger("vibe_engine.observe")
STATUS_FILE = "status.json"


def status_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATUS_FILE


_PLAIN = (str, int, float, bool, type(None))


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a fresh dict) as JSON holds it, what the store gives back; most events
    carry plain values only and need no encoding round trip (a task's end emits one)."""
    extra = data.get("data")
    if all(isinstance(v, _PLAIN) for k, v in data.items() if k != "data") and (
            isinstance(extra, dict) and all(
                isinstance(k, str) and isinstance(v, _PLAIN) for k, v in extra.items())):
        return data
    out: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return out


def _stamp_of(now: datetime) -> tuple[float, date]:
    return now.timestamp(), now.date()


#: Writes in flight at once in :func:`put_states`: enough to fill a group commit, few
#: enough that a burst of 10,000 records does not hold a task each.
PUT_WIDTH = 64


async def put_states(store: Store, kind: str, records: Sequence[tuple[str, dict[str, Any]]],
                     *, width: int = PUT_WIDTH) -> None:
    """``store.put_state(kind, key, value)`` for each record, ``width`` at a time: the
    store commits writes that wait together in one transaction, so a burst of records
    costs a few commits.  The first failure is raised (as itself) once all were tried.
    A store with a ``put_states(kind, records)`` of its own (the SQLite store) is handed
    them all at once."""
    if len(records) == 1:
        await store.put_state(kind, *records[0])
        return
    bulk = getattr(store, "put_states", None)  # a store that writes them all at once
    if bulk is not None:
        await bulk(kind, records)
        return
    todo = iter(records)
    errors: list[Exception] = []

    async def writer() -> None:
        for key, value in todo:  # one iterator shared by the writers
            try:
                await store.put_state(kind, key, value)
            except Exception as exc:  # raised below as itself, not in a group
                errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(min(width, len(records))):
            tg.start_soon(writer)
    if errors:
        raise errors[0]


class HistoryRecorder:
    """Buffers bus events and writes them to the store as ``history`` records."""

    def __init__(self, view: RunView) -> None:
        self.view = view
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._seq = 0
        self._changes = Changes()
        # the wall time and local date of one reading, without the time-zone lookup of
        # ``now()`` when the clock can (every task's end is an event)
        self._stamp: Callable[[], tuple[float, date]] = getattr(
            view.wall, "stamp", None) or (lambda: _stamp_of(view.wall.now()))
        view.bus.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        self._seq += 1
        at, day = self._stamp()
        day = max(day, self.view.tracker.today())  # a wall clock set back keeps the day
        record = _jsonable(event.to_dict())
        record.update(session_id=self.view.session_id, wall=at, day=day.isoformat(),
                      seq=self._seq)
        self._pending.append((f"{self.view.session_id}:{self._seq:08d}", record))
        self._changes.set()

    async def flush(self) -> int:
        pending, self._pending = self._pending, []
        await put_states(self.view.store, "history", pending)
        return len(pending)

    async def run(self) -> None:
        try:
            while True:
                await self._changes.wait()
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.flush()
                except (VibeEngineError, OSError) as exc:
                    _log.warning("history_flush_failed", error=str(exc))


#: After a write, ``status.json`` waits this many times the write's own time before the
#: next (≤ 5 % of the loop on huge runs) -- or this other factor when a pool's capacity
#: changed (≤ 20 %): a new quota slice is shown at the next interval, not seconds late.
_BACK_OFF, _CAPACITY_BACK_OFF = 20, 4


class StatusWriter:
    """Rewrites ``status.json`` when something changed, at most once per interval."""

    def __init__(self, view: RunView, *, interval_s: float = 1.0) -> None:
        self.view = view
        self.interval_s = interval_s
        self.path = status_path(view.config.state_dir)
        self.writes = 0
        self._failing = False
        self._changes = watch_changes(view)
        self._capacity = Changes(pending=False)
        view.on_capacity.connect(self._capacity_changed)

    def _capacity_changed(self, _pool: str) -> None:
        self._changes.set()
        self._capacity.set()

    def write(self, *, running: bool = True) -> Path:
        """Replace ``status.json`` atomically (a temporary file, then a rename)."""
        private_dir(self.path.parent)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open_private(tmp) as out:
                write_status(self.view, out, now=anyio.current_time(), running=running)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk keeps no half-written file
            raise
        self.writes += 1
        return self.path

    def _write_running(self) -> None:
        """One periodic write; a failed one (a full disk, ``status.json`` made a folder)
        is logged when it starts failing and when it recovers, and never ends the run:
        ``status.json`` only shows the run, the store keeps what it spent."""
        try:
            self.write()
        except OSError as exc:
            if not self._failing:
                _log.warning("status_write_failed", error=str(exc))
            self._failing = True
            return
        if self._failing:
            _log.info("status_write_recovered", path=str(self.path))
        self._failing = False

    async def _load_days(self) -> None:
        """Today's totals read from the store before they are shown (see
        :meth:`Tracker.load_shown_days`); while it cannot answer, what is held is shown."""
        try:
            await self.view.tracker.load_shown_days()
        except StoreError as exc:
            _log.warning("status_day_unread", error=str(exc))

    async def run(self) -> None:
        try:
            while True:
                await self._changes.wait()
                self._capacity.pending = False  # this write shows the capacities
                start = anyio.current_time()
                await self._load_days()
                self._write_running()
                written = anyio.current_time()
                spent = written - start
                await anyio.sleep(max(self.interval_s, _CAPACITY_BACK_OFF * spent))
                with anyio.move_on_after(written + _BACK_OFF * spent - anyio.current_time()):
                    await self._capacity.wait()
        finally:
            try:
                self.write(running=False)
            except OSError as exc:
                _log.warning("status_write_failed", error=str(exc))


@dataclass(slots=True)
class Observers:
    """The observers a run carries (``None`` = disabled in config), and their services."""

    history: HistoryRecorder | None = None
    status: StatusWriter | None = None
    metrics: Metrics | None = None

    def services(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        return [o.run for o in (self.history, self.status, self.metrics) if o is not None]


def build_observers(view: RunView) -> Observers:
    """History, ``status.json`` and (when enabled) metrics, as the config asks."""
    cfg = view.config.observe
    out = Observers()
    if cfg.history:
        out.history = HistoryRecorder(view)
    if cfg.status_interval_s:
        out.status = StatusWriter(view, interval_s=cfg.status_interval_s)
    textfile = view.config.metrics.textfile
    if textfile is not None and (problem := textfile_problem(textfile)) is not None:
        raise ConfigError("metrics.textfile", str(textfile), problem)
    if view.config.metrics.enabled or textfile is not None:
        from scheduler.observe._metrics import Metrics

        out.metrics = Metrics(view)
    return out


def textfile_problem(path: Path) -> str | None:
    """Why the final metrics could not be left at ``path``, found when the run is built:
    written only when the run ends, a folder there (or one that cannot be made) would
    cost the whole run's figures for a warning.  A missing folder is made then; a FIFO
    or device is refused, as the file is replaced by a rename."""
    if path.is_dir():
        return "is a folder; give a file name ending in .prom"
    if path.exists() and not path.is_file():
        return "exists and is not a regular file (the metrics replace it by a rename)"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder, so the file's folder cannot be made"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    return None
