"""The JSON shape of a snapshot and of ``vibe-engine status --json``, defined once.

:meth:`~scheduler.observe._snapshot.Snapshot.to_dict` returns a :class:`SnapshotDoc`
(also what ``<state_dir>/status.json`` holds); ``status --json`` prints a
:class:`StatusDoc`: the snapshot plus each task's own budget rows.  Both paths
of ``status`` (a running orchestrator's ``status.json``, or the store) fill the
same keys; docs/observability.md lists them and a test keeps these types equal to
the dataclasses' fields.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["BudgetDoc", "EventDoc", "ModelDoc", "PoolDoc", "SnapshotDoc", "StatusDoc",
           "TaskBudgetDoc", "TaskDoc"]


class TaskDoc(TypedDict):
    task_id: str
    agent: str
    status: str
    priority: str
    task_type: str
    complexity: str
    model: str
    attempt: int
    calls: int
    tokens: int
    cost_usd: float
    budget_fraction: float
    reason: str
    queue_position: int | None
    estimated_wait_s: float | None
    pool: str | None
    result: Any
    answer: str


class BudgetDoc(TypedDict):
    scope: str
    dimension: str
    used: float
    limit: float
    fraction: float
    level: str


class PoolDoc(TypedDict):
    name: str
    leases: int
    waiting: int
    calls_in_use: int
    concurrent: int | None
    tokens_available: float | None
    tokens_per_minute: int | None
    grants: int
    expired: int


class ModelDoc(TypedDict):
    model: str
    state: str
    calls: int
    success_rate: float
    error_rate: float
    mean_latency_s: float


class EventDoc(TypedDict):
    name: str
    at: float
    message: str
    task_id: str | None
    level: str
    wall: float


class SnapshotDoc(TypedDict):
    session_id: str
    at: float
    running: bool
    pid: int
    host: str
    proc_start: str
    written_at: str
    source: str
    tasks: list[TaskDoc]
    budgets: list[BudgetDoc]
    pools: list[PoolDoc]
    models: list[ModelDoc]
    events: list[EventDoc]
    totals: dict[str, Any]
    counts: dict[str, int]


class TaskBudgetDoc(TypedDict):
    """One dimension of one task's own budget (``vibe-engine status``'s task rows)."""

    task_id: str
    scope: str
    dimension: str
    used: float
    limit: float
    fraction: float
    level: str
    paused: bool


class StatusDoc(SnapshotDoc):
    """``status --json``: the snapshot (session and day bars in ``budgets``) plus every
    task's own budget rows."""

    task_budgets: list[TaskBudgetDoc]
