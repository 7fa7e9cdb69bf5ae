"""A frozen picture of a running orchestrator, for the live view, ``status`` and metrics.

:func:`snapshot_of` reads an :class:`~scheduler.runtime._orchestrator.Orchestrator`
through a few small, optional doors so parts can land independently:

* ``orch.handles`` and ``orch.tracker`` (always there): task states, budgets;
* ``orch.allocator.statistics()`` (when wired): pools, leases, queue
  position and estimated wait of every waiting request (R5.5);
* ``orch.controller.is_paused(task_id)`` (when wired): paused tasks (R3.4);
* ``orch.gateway.health.statistics()`` (when wired): per-model health (R6.3–R6.5);
* ``orch.bus.history``: recent notable events.

Every figure is plain data and :meth:`Snapshot.to_dict` / :meth:`Snapshot.from_dict`
round-trip it through JSON, so ``vibe-engine status`` in another terminal
shows exactly what the live view shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from scheduler.config._config import AlertsConfig

if TYPE_CHECKING:
    from scheduler.budget import ScopeState
    from scheduler.runtime._orchestrator import Orchestrator
    from scheduler.tasks._state import TaskHandle

__all__ = [
    "STATES", "BudgetBar", "EventView", "ModelView", "PoolView", "Snapshot", "TaskView",
    "alert_level", "budget_bars", "snapshot_of",
]

#: Task states the views know, in display order.
STATES = ("running", "waiting", "paused", "deferred", "broken_down", "pending", "requeued",
          "completed", "finished", "failed")
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (faster than :func:`dataclasses.asdict` for big runs)."""
        return {
            "session_id": self.session_id, "at": self.at, "running": self.running,
            "pid": self.pid, "written_at": self.written_at, "source": self.source,
            "tasks": _rows(self.tasks), "budgets": _rows(self.budgets),
            "pools": _rows(self.pools), "models": _rows(self.models),
            "events": _rows(self.events), "totals": dict(self.totals), "counts": self.counts(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Snapshot:
        return cls(
            session_id=str(d.get("session_id", "")),
            at=float(d.get("at", 0.0)),
            running=bool(d.get("running", False)),
            pid=int(d.get("pid", 0)),
            written_at=str(d.get("written_at", "")),
            source=str(d.get("source", "orchestrator")),
            tasks=tuple(TaskView(**t) for t in d.get("tasks", ())),
            budgets=tuple(BudgetBar(**b) for b in d.get("budgets", ())),
            pools=tuple(PoolView(**p) for p in d.get("pools", ())),
            models=tuple(ModelView(**m) for m in d.get("models", ())),
            events=tuple(EventView(**e) for e in d.get("events", ())),
            totals=dict(d.get("totals", {})),
        )


def _rows(items: tuple[Any, ...]) -> list[dict[str, Any]]:
    if not items:
        return []
    names = [f.name for f in fields(items[0])]
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


def _statistics(obj: Any) -> Any:
    """``obj.statistics()`` when ``obj`` offers it, else ``None`` (parts land independently)."""
    fn = getattr(obj, "statistics", None)
    return fn() if callable(fn) else None


def _waits(orch: Orchestrator) -> tuple[dict[str, Any], tuple[PoolView, ...]]:
    stats = _statistics(getattr(orch, "allocator", None))
    if stats is None:
        return {}, ()
    waits: dict[str, Any] = {}
    for w in getattr(stats, "waiters", ()):
        best = waits.get(w.holder)
        if best is None or w.position < best.position:
            waits[w.holder] = w
    pools = tuple(
        PoolView(
            name=p.name, leases=p.leases, waiting=p.waiting, calls_in_use=p.calls_in_use,
            concurrent=p.concurrent, tokens_available=p.tokens_available,
            tokens_per_minute=p.tokens_per_minute, grants=p.grants, expired=p.expired,
        )
        for p in getattr(stats, "pools", {}).values()
    )
    return waits, pools


def _models(orch: Orchestrator) -> tuple[ModelView, ...]:
    monitor = getattr(orch, "health", None) or getattr(orch.gateway, "health", None)
    stats = _statistics(monitor)
    if stats is None:
        return ()
    return tuple(
        ModelView(m.model, str(m.state), m.calls, m.success_rate, m.error_rate, m.mean_latency_s)
        for m in getattr(stats, "models", {}).values()
    )


def _is_paused(orch: Orchestrator, task_id: str) -> bool:
    controller = getattr(orch, "controller", None)
    fn = getattr(controller, "is_paused", None)
    return bool(fn(task_id)) if callable(fn) else False


def _pause_reason(orch: Orchestrator, task_id: str) -> str:
    fn = getattr(getattr(orch, "controller", None), "pause_info", None)
    info = fn(task_id) if callable(fn) else None
    return str(getattr(info, "reason", "") or "")


def _task_view(orch: Orchestrator, h: TaskHandle, wait: Any, tracked: set[str]) -> TaskView:
    status, reason = h.status, h.reason
    if status == "running" and _is_paused(orch, h.id):
        status, reason = "paused", _pause_reason(orch, h.id) or reason
    elif status == "running" and wait is not None:
        status = "waiting"
    tokens, cost, frac = 0, 0.0, 0.0
    if h.id in tracked:
        scope = orch.tracker.task_scope(h.id)
        tokens, cost = scope.totals.tokens, scope.totals.cost_usd
        frac = max((b.fraction for b in budget_bars(scope, orch.config.alerts)), default=0.0)
    return TaskView(
        task_id=h.id, agent=h.spec.agent, status=status, priority=h.spec.priority,
        task_type=h.profile.task_type, complexity=h.profile.complexity, model=h.model,
        attempt=h.attempt, calls=h.calls, tokens=tokens, cost_usd=cost, budget_fraction=frac,
        reason=reason,
        queue_position=None if wait is None else int(wait.position),
        estimated_wait_s=None if wait is None else float(wait.estimated_wait_s),
        pool=None if wait is None else str(wait.pool),
    )


def event_views(events: Iterable[Any], limit: int) -> tuple[EventView, ...]:
    """The last ``limit`` events as views (``Event`` objects or their dicts)."""
    out = []
    for e in list(events)[-limit:] if limit else []:
        d = e if isinstance(e, Mapping) else e.to_dict()
        out.append(EventView(str(d["name"]), float(d.get("at", 0.0)), str(d.get("message", "")),
                             d.get("task_id"), str(d.get("level", "info")),
                             float(d.get("wall", 0.0))))
    return tuple(out)


def snapshot_of(orch: Orchestrator, *, now: float, events: int = 50,
                running: bool = True) -> Snapshot:
    """Read ``orch`` into a :class:`Snapshot` (pure reads; never awaits)."""
    waits, pools = _waits(orch)
    tracked = set(orch.tracker.tasks())
    tasks = tuple(_task_view(orch, h, waits.get(h.id), tracked) for h in orch.handles.values())
    alerts = orch.config.alerts
    budgets = [*budget_bars(orch.tracker.session, alerts),
               *budget_bars(orch.tracker.day_scope(), alerts)]
    for h in orch.handles.values():  # task scopes: only the hot dimensions of live tasks
        if h.id in tracked and not h.finished:
            budgets.extend(b for b in budget_bars(orch.tracker.task_scope(h.id), alerts)
                           if b.level != "ok")
    return Snapshot(
        session_id=orch.session_id, at=now, running=running, pid=os.getpid(),
        written_at=orch.wall.now().isoformat(), source="orchestrator", tasks=tasks,
        budgets=tuple(budgets), pools=pools, models=_models(orch),
        events=event_views(orch.bus.history, events),
        totals=orch.tracker.session.totals.to_dict(),
    )
