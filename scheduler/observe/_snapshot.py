"""A frozen picture of a run, for the live view, ``status`` and metrics.

:func:`scheduler.observe._view.snapshot_of` fills it from the parts of a run.
Every figure is plain data and :meth:`Snapshot.to_dict` / :meth:`Snapshot.from_dict`
round-trip it through JSON, so ``vibe-engine status`` in another terminal
shows exactly what the live view shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import IO, TYPE_CHECKING, Any, cast

from scheduler.config import AlertsConfig
from scheduler.control import answer_command
from scheduler.observe._schema import (
    BudgetDoc,
    EventDoc,
    ModelDoc,
    PoolDoc,
    SnapshotDoc,
    TaskDoc,
)

if TYPE_CHECKING:
    from scheduler.budget import ScopeState

__all__ = [
    "STATES", "BudgetBar", "EventView", "ModelView", "PoolView", "Snapshot", "TaskView",
    "alert_level", "answer_command", "budget_bars", "event_views",
]

#: Task states the views know, in display order.
STATES = ("running", "waiting", "paused", "deferred", "broken_down", "pending", "requeued",
          "completed", "finished", "failed", "interrupted")
#: Health states mapped to a number for gauges: 1 available, 0.5 recovering, 0 unavailable.
HEALTH_VALUE = {"available": 1.0, "recovering": 0.5, "unavailable": 0.0}


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task (agent) and what it is doing now."""

    task_id: str
    agent: str
    status: str
    priority: str = "normal"
    task_type: str = ""
    complexity: str = ""
    model: str = ""
    attempt: int = 1
    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    budget_fraction: float = 0.0
    reason: str = ""
    queue_position: int | None = None
    estimated_wait_s: float | None = None
    pool: str | None = None
    #: What the agent returned (JSON), once the task completed; read from the store.
    result: Any = None
    #: For a paused task: the command that answers it (R3.4), see :func:`answer_command`.
    answer: str = ""


@dataclass(frozen=True, slots=True)
class BudgetBar:
    """Use of one dimension of one scope, with its alert level (R3.1)."""

    scope: str
    dimension: str
    used: float
    limit: float
    fraction: float
    level: str


@dataclass(frozen=True, slots=True)
class PoolView:
    """Leases and capacity use of one provider pool (R5.3–R5.5)."""

    name: str
    leases: int = 0
    waiting: int = 0
    calls_in_use: int = 0
    concurrent: int | None = None
    tokens_available: float | None = None
    tokens_per_minute: int | None = None
    grants: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class ModelView:
    """Health of one model (R6.3–R6.5)."""

    model: str
    state: str = "available"
    calls: int = 0
    success_rate: float = 1.0
    error_rate: float = 0.0
    mean_latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class EventView:
    """One notable runtime event (alert, pause, deadlock victim, routing change …)."""

    name: str
    at: float
    message: str = ""
    task_id: str | None = None
    level: str = "info"
    wall: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the views show, at one moment."""

    session_id: str
    at: float
    running: bool = True
    pid: int = 0
    #: The writer's host and start (``core.process_start``): with ``pid``, which process
    #: it is, so a reader tells it from another given its pid later.
    host: str = ""
    proc_start: str = ""
    written_at: str = ""
    source: str = "orchestrator"
    tasks: tuple[TaskView, ...] = ()
    budgets: tuple[BudgetBar, ...] = ()
    pools: tuple[PoolView, ...] = ()
    models: tuple[ModelView, ...] = ()
    events: tuple[EventView, ...] = ()
    totals: Mapping[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        out: dict[str, int] = {}
        for t in self.tasks:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def to_dict(self) -> SnapshotDoc:
        """Plain JSON-ready data (faster than :func:`dataclasses.asdict` for big runs)."""
        return self._doc(cast("list[TaskDoc]", _rows(self.tasks, TaskView)))

    def write_json(self, out: IO[str], rows: Iterable[TaskView] | None = None, *,
                   docs: Iterable[dict[str, Any]] | None = None) -> None:
        """:meth:`to_dict` as JSON into ``out``, a task row at a time: a run of 10,000
        tasks never holds every row as a dict and as text at once (``status.json``).
        ``rows``: the task rows in place of :attr:`tasks`, made as they are written (the
        counts are theirs), so not even every row's object is held at once; ``docs``:
        the same as their documents (each :class:`TaskView`'s fields in its order)."""
        doc = self._doc([])
        out.write(json.dumps(doc, default=str).split(_NO_TASKS, 1)[0] + '"tasks": [')
        if docs is None:
            names = [f.name for f in fields(TaskView)]
            row = attrgetter(*names)
            docs = (dict(zip(names, row(t), strict=True))
                    for t in (self.tasks if rows is None else rows))
        counts: dict[str, int] = {}
        chunk: list[dict[str, Any]] = []
        sep = ""
        for d in docs:
            status = d["status"]
            counts[status] = counts.get(status, 0) + 1
            chunk.append(d)
            if len(chunk) == _ROWS_PER_WRITE:
                out.write(sep + json.dumps(chunk, default=str)[1:-1])
                chunk.clear()
                sep = ","
        if chunk:
            out.write(sep + json.dumps(chunk, default=str)[1:-1])
        doc["counts"] = counts
        out.write("]" + json.dumps(doc, default=str).split(_NO_TASKS, 1)[1])

    def _doc(self, tasks: list[TaskDoc]) -> SnapshotDoc:
        return {
            "session_id": self.session_id, "at": self.at, "running": self.running,
            "pid": self.pid, "host": self.host, "proc_start": self.proc_start,
            "written_at": self.written_at, "source": self.source,
            "tasks": tasks,
            "budgets": cast("list[BudgetDoc]", _rows(self.budgets, BudgetBar)),
            "pools": cast("list[PoolDoc]", _rows(self.pools, PoolView)),
            "models": cast("list[ModelDoc]", _rows(self.models, ModelView)),
            "events": cast("list[EventDoc]", _rows(self.events, EventView)),
            "totals": dict(self.totals), "counts": self.counts(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Snapshot:
        """The snapshot of :meth:`to_dict`'s data (also of a :class:`StatusDoc`)."""
        return cls(
            session_id=str(d.get("session_id", "")),
            at=float(d.get("at", 0.0)),
            running=bool(d.get("running", False)),
            pid=int(d.get("pid", 0)),
            host=str(d.get("host", "")),
            proc_start=str(d.get("proc_start", "")),
            written_at=str(d.get("written_at", "")),
            source=str(d.get("source", "orchestrator")),
            tasks=tuple(TaskView(**t) for t in d.get("tasks", ())),
            budgets=tuple(BudgetBar(**b) for b in d.get("budgets", ())),
            pools=tuple(PoolView(**p) for p in d.get("pools", ())),
            models=tuple(ModelView(**m) for m in d.get("models", ())),
            events=tuple(EventView(**e) for e in d.get("events", ())),
            totals=dict(d.get("totals", {})),
        )


#: Task rows encoded at once by :meth:`Snapshot.write_json`: one encoder call per row
#: costs more than the row; many rows at once would hold them all as dicts and text (at
#: the run's peak memory, when every agent waits).
_ROWS_PER_WRITE = 32

#: The task rows' place in :meth:`Snapshot.write_json`'s head: a key's quotes are never
#: inside a JSON string (they are escaped there), so only the top-level key matches.
_NO_TASKS = '"tasks": []'


def _rows(items: tuple[Any, ...], kind: type) -> list[dict[str, Any]]:
    names = [f.name for f in fields(kind)]
    return [{n: getattr(item, n) for n in names} for item in items]


def alert_level(fraction: float, alerts: AlertsConfig) -> str:
    """``ok`` / ``warning`` / ``critical`` / ``exceeded`` for a used fraction (R3.1)."""
    if fraction >= alerts.exceeded:
        return "exceeded"
    if fraction >= alerts.critical:
        return "critical"
    if fraction >= alerts.warning:
        return "warning"
    return "ok"


def budget_bars(scope: ScopeState, alerts: AlertsConfig) -> list[BudgetBar]:
    """One bar per limited dimension of ``scope``."""
    bars: list[BudgetBar] = []
    for dim in scope.dimensions():
        limit = scope.limit(dim)
        if not limit:
            continue
        used = float(scope.used(dim))
        frac = used / limit
        bars.append(BudgetBar(scope.name, dim, used, float(limit), frac, alert_level(frac, alerts)))
    return bars


def event_views(events: Iterable[Any], limit: int) -> tuple[EventView, ...]:
    """The last ``limit`` events as views (``Event`` objects or their dicts)."""
    out = []
    for e in list(events)[-limit:] if limit else []:
        d = e if isinstance(e, Mapping) else e.to_dict()
        out.append(EventView(str(d["name"]), float(d.get("at", 0.0)), str(d.get("message", "")),
                             d.get("task_id"), str(d.get("level", "info")),
                             float(d.get("wall", 0.0))))
    return tuple(out)
