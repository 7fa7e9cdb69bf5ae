"""What a run reports: how each task ended, what it used and what its agent returned."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scheduler.budget import ScopeState, Tracker
from scheduler.core import StoreUnavailableError, Totals
from scheduler.runtime._session import encode_result
from scheduler.store import Store, task_of_key
from scheduler.tasks import TaskHandle, TaskStatus


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one task ended."""

    task_id: str
    agent: str
    status: str
    reason: str
    attempts: int
    task_type: str
    complexity: str
    model: str
    usage: Totals
    #: What the agent's ``run()`` returned, as stored (JSON); ``None`` unless completed.
    result: Any = None


@dataclass(frozen=True, slots=True)
class RunReport:
    """Outcomes of a run, plus per-model totals of the run's usage."""

    session_id: str
    outcomes: dict[str, TaskOutcome]
    by_model: dict[str, Totals] = field(default_factory=dict)

    @property
    def total(self) -> Totals:
        t = Totals()
        for o in self.outcomes.values():
            t.merge(o.usage)
        return t


def stored_result(handle: TaskHandle) -> Any:
    """What a completed task's agent returned, as kept with the task (JSON)."""
    if handle.status is not TaskStatus.COMPLETED:
        return None
    if handle.stored_result is None and handle.result is not None:
        # a task a continued session completed: restored as stored already
        handle.stored_result = encode_result(handle.id, handle.result)
    return handle.stored_result


async def build_report(session_id: str, handles: Iterable[TaskHandle], tracker: Tracker,
                       store: Store) -> RunReport:
    """The outcome of every task, with this session's usage read from the store."""
    outcomes: dict[str, TaskOutcome] = {}
    by_model: dict[str, Totals] = {}
    tracked = set(tracker.tasks())
    for handle in handles:
        usage = Totals()  # this session's use only: a task id may recur across sessions
        # a task this run tracked with nothing charged has no event in the store
        used = handle.id not in tracked or _charged(tracker.task_scope(handle.id))
        try:
            events = await store.events(task_id=handle.id) if used else ()
        except StoreUnavailableError:
            if handle.id not in tracked:
                raise
            # Redis down as the run ends: this process's totals of the task (its events
            # wait in the spool; ``vibe-engine report`` reads them once they are applied)
            usage = _copy(tracker.task_scope(handle.id).totals)
            events = ()
        for event in events:
            if event.session_id == session_id:
                usage.add(event)
                if event.model:
                    by_model.setdefault(event.model, Totals()).add(event)
        outcomes[handle.id] = TaskOutcome(
            handle.id, handle.spec.agent, handle.status, handle.reason, handle.attempt,
            handle.profile.task_type, handle.profile.complexity, handle.model, usage,
            stored_result(handle),
        )
    return RunReport(session_id, outcomes, by_model)


async def forgotten_outcomes(session_id: str, kept: Iterable[str], store: Store
                             ) -> dict[str, TaskOutcome]:
    """The outcomes of the session's tasks the run forgot once they ended (``serve``'s
    idle grouped tasks), from their records and events in the store: each id once, as
    its last run ended, with this session's use of it over all its runs."""
    held = set(kept)
    outcomes: dict[str, TaskOutcome] = {}
    for key, record in (await store.list_state("task")).items():
        session, task_id = task_of_key(key)
        if session != session_id or task_id in held:
            continue
        usage = Totals()
        for event in await store.events(task_id=task_id):
            if event.session_id == session_id:
                usage.add(event)
        outcomes[task_id] = TaskOutcome(
            task_id, str(record.get("agent", "")), str(record.get("status", "")),
            str(record.get("reason", "")), int(record.get("attempts", 1)),
            str(record.get("task_type", "")), str(record.get("complexity", "")),
            str(record.get("model", "")), usage, record.get("result"))
    return outcomes


def _charged(scope: ScopeState) -> bool:
    """Whether anything was charged to ``scope`` (its totals hold every event of its task
    recorded since the task started, and what the store held for it then)."""
    t = scope.totals
    return bool(t.calls or t.tokens or t.cost_usd or t.file_edits or t.shell_commands
                or t.dangerous_commands)


def _copy(totals: Totals) -> Totals:
    out = Totals()
    out.merge(totals)
    return out
