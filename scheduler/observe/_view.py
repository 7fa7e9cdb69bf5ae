"""What observers read of a run (:class:`RunView`), and :func:`snapshot_of` over it.

The composition root hands observers a :class:`RunView` of the parts they read —
never the orchestrator — so observing cannot drive the run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, Any

import anyio

from scheduler.allocator import Allocator, WaiterStatistics
from scheduler.budget import ScopeState, Tracker
from scheduler.config import VibeConfig
from scheduler.control import PauseController
from scheduler.core import EventBus, Hook, UsageEvent, WallClock, this_process
from scheduler.observe._snapshot import (
    ModelView,
    PoolView,
    Snapshot,
    TaskView,
    answer_command,
    budget_bars,
    event_views,
)
from scheduler.routing import HealthMonitor
from scheduler.store import Store
from scheduler.tasks import TaskHandle, TaskStatus

__all__ = ["Changes", "RunView", "snapshot_of", "watch_changes", "write_status"]


@dataclass(frozen=True, slots=True)
class RunView:
    """The parts of one run that observers read."""

    config: VibeConfig
    session_id: str
    wall: WallClock
    bus: EventBus
    store: Store
    tracker: Tracker
    tasks: Mapping[str, TaskHandle]
    allocator: Allocator
    health: HealthMonitor
    controller: PauseController
    #: Called after every settled model call (the gateway's ``on_settle``).
    on_settle: Hook[[TaskHandle, UsageEvent]]
    #: Called when a pool's capacity changed (``PoolCapacity.on_change``: a quota slice).
    on_capacity: Hook[[str]] = field(default_factory=Hook)


def _waits(view: RunView) -> tuple[dict[str, WaiterStatistics], tuple[PoolView, ...]]:
    stats = view.allocator.statistics()
    waits: dict[str, WaiterStatistics] = {}
    for w in stats.waiters:
        best = waits.get(w.holder)
        if best is None or w.position < best.position:
            waits[w.holder] = w
    pools = tuple(
        PoolView(
            name=p.name, leases=p.leases, waiting=p.waiting, calls_in_use=p.calls_in_use,
            concurrent=p.concurrent, tokens_available=p.tokens_available,
            tokens_per_minute=p.tokens_per_minute, grants=p.grants, expired=p.expired,
        )
        for p in stats.pools.values()
    )
    return waits, pools


def _models(view: RunView) -> tuple[ModelView, ...]:
    return tuple(
        ModelView(m.model, str(m.state), m.calls, m.success_rate, m.error_rate, m.mean_latency_s)
        for m in view.health.statistics().models.values()
    )


def _task_doc(
    view: RunView, h: TaskHandle, wait: WaiterStatistics | None, scope: ScopeState | None,
    grouped_calls: int = 0,
) -> dict[str, Any]:
    """A task's row as ``status.json`` holds it: :class:`TaskView`'s fields in its order
    (``status.json`` writes it as it is, no row object per task per write)."""
    status, reason, answer = str(h.status), h.reason, ""
    if h.status is TaskStatus.RUNNING and view.controller.is_paused(h.id):
        info = view.controller.pause_info(h.id)
        status, reason = "paused", (info.reason if info is not None else "") or reason
        answer = (answer_command(h.id, info.dimension, info.used, info.limit,
                                 view.config.state_dir) if info is not None
                  else answer_command(h.id, state_dir=view.config.state_dir))
    elif h.status is TaskStatus.RUNNING and wait is not None:
        status = "waiting"
    tokens, cost, frac = 0, 0.0, 0.0
    if scope is not None:
        tokens, cost = scope.totals.tokens, scope.totals.cost_usd
        frac = scope.max_fraction()
    spec, profile = h.spec, h.profile
    return {
        "task_id": spec.id, "agent": spec.agent, "status": status, "priority": spec.priority,
        "task_type": profile.task_type, "complexity": profile.complexity, "model": h.model,
        "attempt": h.attempt, "calls": h.calls + grouped_calls, "tokens": tokens,
        "cost_usd": cost, "budget_fraction": frac, "reason": reason,
        "queue_position": None if wait is None else int(wait.position),
        "estimated_wait_s": None if wait is None else float(wait.estimated_wait_s),
        "pool": None if wait is None else str(wait.pool), "result": None, "answer": answer,
    }


def snapshot_of(view: RunView, *, now: float, events: int = 50,
                running: bool = True) -> Snapshot:
    """Read ``view`` into a :class:`Snapshot` (pure reads; never awaits)."""
    waits, pools = _waits(view)
    frame = _frame(view, now=now, events=events, running=running, pools=pools)
    return replace(frame, tasks=tuple(TaskView(**d) for d in _task_docs(view, waits)))


def write_status(view: RunView, out: IO[str], *, now: float, running: bool = True) -> None:
    """:func:`snapshot_of` as JSON into ``out`` (``status.json``), each task's row made as
    it is written: a run of thousands of waiting agents holds a few rows, not one each."""
    waits, pools = _waits(view)
    frame = _frame(view, now=now, events=50, running=running, pools=pools)
    frame.write_json(out, docs=_task_docs(view, waits))


def _frame(view: RunView, *, now: float, events: int, running: bool,
           pools: tuple[PoolView, ...]) -> Snapshot:
    """The snapshot without its task rows: budgets, pools, models, events and totals."""
    tracker, alerts = view.tracker, view.config.alerts
    budgets = [*budget_bars(tracker.session, alerts), *budget_bars(tracker.day_scope(), alerts)]
    tracked = set(tracker.tasks())
    for h in view.tasks.values():
        tid = h.id
        # task scopes: only the hot dimensions of live tasks (none below the warning mark)
        if tid not in tracked or h.finished:
            continue
        scope = tracker.task_scope(tid)
        if scope.max_fraction() >= alerts.warning:
            budgets.extend(b for b in budget_bars(scope, alerts) if b.level != "ok")
        day = tracker.own_day_scope(tid)  # a serve key's day_budget
        if day is not None:
            budgets.extend(b for b in budget_bars(day, alerts) if b.level != "ok")
    host, pid, start = this_process()
    return Snapshot(
        session_id=view.session_id, at=now, running=running, pid=pid, host=host,
        proc_start=start,
        written_at=view.wall.now().isoformat(), source="orchestrator",
        budgets=tuple(budgets), pools=pools, models=_models(view),
        events=event_views(view.bus.history, events),
        totals=tracker.session.totals.to_dict(),
    )


def _task_docs(view: RunView, waits: Mapping[str, WaiterStatistics]
               ) -> Iterator[dict[str, Any]]:
    """Each task's row as its document (:func:`_task_doc`), in the run's order."""
    tracker = view.tracker
    tracked = set(tracker.tasks())
    # a parent's row counts its grouped tasks' calls (``KEY/NAME``), as its scope does use
    grouped: dict[str, int] = {}
    for h in view.tasks.values():
        parent = h.id.rpartition("/")[0]
        if parent:
            grouped[parent] = grouped.get(parent, 0) + h.calls
    for h in view.tasks.values():
        tid = h.id
        scope = tracker.task_scope(tid) if tid in tracked else None
        yield _task_doc(view, h, waits.get(tid), scope, grouped.get(tid, 0) if grouped else 0)


class Changes:
    """Wakes a service when something it shows changed; no timer runs while idle.

    Periodic timers would keep a virtual clock (trio's ``MockClock``) jumping
    forward whenever the other tasks wait for a worker thread; waiting on a
    change instead leaves virtual time to the workload.
    """

    def __init__(self, *, pending: bool = True) -> None:
        self.pending = pending
        self._event: anyio.Event | None = None

    def set(self, *_: Any) -> None:
        self.pending = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        while not self.pending:
            self._event = anyio.Event()
            await self._event.wait()
        self.pending = False


def watch_changes(view: RunView) -> Changes:
    """A :class:`Changes` set by every bus event and every settled model call."""
    changes = Changes()
    view.bus.subscribe(changes.set)
    view.on_settle.connect(changes.set)
    return changes
