"""Budget a person added, for every process on the store (R3.4 across replicas).

A scope that counts every process's use -- a ``serve`` key's task (``span = "store"``),
its per-day scope, the day -- has one budget for all the processes on a shared store
(``serve`` replicas, orchestrators on one SQLite file or Redis namespace).  A person's
``add_budget`` to such a scope is applied by the one process that received it, and kept
as a record of kind :data:`KIND`, one per decision, keyed by the scope and a nonce.
Every process applies each record once to the scope (:meth:`FleetBudget.sync`; a task
the run forgot and starts again gets it anew): when the process starts (the day's),
when a task whose budget spans the store starts, when a check refuses a call (before
refusing or pausing), and while a task waits paused.
So the others raise their limits by the amount added, not by it times N, and a process
started later starts from the raised budget.  A ``finish`` is passed on to the pauses
the other processes have of the task (:meth:`FleetBudget.pass_on`).

Records that can no longer matter are deleted at a process's start
(:meth:`FleetBudget.prune`): a record of
a day before yesterday (a past day's is never applied; yesterday's is kept for a process
whose clock is a little behind), and the ``day_begun`` records but the latest few (only
the latest is read: the day no process goes back before), and the claims of past days'
alerts (:data:`NOTIFIED`).  A task's own records stay:
its budget spans every session on the store, a resumed or later one too.
"""

from __future__ import annotations

import secrets
from datetime import date, timedelta
from typing import Any

from scheduler.budget import ScopeState, Tracker
from scheduler.config import Limits
from scheduler.control._new_day import scope_day
from scheduler.core import StoreError, get_logger
from scheduler.store import Store, put_state_if_absent, task_key, task_of_key
from scheduler.store._base import DAY_BEGUN

_log = get_logger("vibe_engine.pause")

#: The state kind of one ``add_budget`` to a scope every process counts.
KIND = "fleet_budget"
#: The ``day_begun`` records kept (the latest days): a week of margin over the one read.
KEEP_DAYS_BEGUN = 7
#: The state kind of a crossing of a budget every process counts that people were told
#: of (``scheduler.control._alerts``; keyed ``<scope>#<dimension>#<level>#<limit>``).
NOTIFIED = "alert_notified"


def counts_every_process(scope: ScopeState) -> bool:
    """Whether every process on the store counts ``scope``'s use (its budget is one)."""
    return scope.shared or scope.name.startswith("day:")


class FleetBudget:
    """The budget people added to scopes every process counts, applied here once each."""

    def __init__(self, store: Store, tracker: Tracker) -> None:
        self._store = store
        self._tracker = tracker

    async def record(self, scope: ScopeState, extra: dict[str, Any], task_id: str,
                     source: str) -> None:
        """Keep ``extra``, just added here to ``scope``, for the other processes."""
        key = f"{scope.name}#{secrets.token_hex(6)}"
        _applied(scope).add(key)
        await self._store.put_state(KIND, key, {
            "scope": scope.name, "limits": extra, "task_id": task_id, "source": source,
            "at": self._tracker.wall.now().timestamp()})

    async def sync(self, task_id: str) -> bool:
        """Apply the records of ``task_id``'s scopes that this process has not applied;
        True when a limit was raised.  An unreachable store raises nothing: the limits
        stay as they are until the next sync."""
        try:
            records = await self._store.list_state(KIND)
        except StoreError as exc:
            _log.warning("fleet_budget_unread", task_id=task_id, error=str(exc))
            return False
        today = self._tracker.today().isoformat()
        raised = False
        for key, value in records.items():
            scope = self._scope(task_id, str(value.get("scope", "")), today)
            if scope is None or (scope.added is not None and key in scope.added):
                continue
            _applied(scope).add(key)
            try:
                extra = Limits.model_validate(value.get("limits") or {})
            except ValueError:
                _log.warning("fleet_budget_invalid", key=key, stored=value)
                continue
            self._tracker.raise_limits(scope, extra)
            raised = True
        return raised

    async def open(self) -> None:
        """At the process's start: apply what other processes added to the day before it
        started (in its limits and its status from the start, not from its first
        refusal), and delete the records that can no longer matter."""
        await self.sync("")  # no task: the day's records only
        await self.prune()

    async def prune(self) -> int:
        """Delete the records that can no longer matter (see the module's docstring):
        past days' budget records and alert claims, and all but the latest ``day_begun``
        records; how many.
        An unreachable store raises nothing: the next process start prunes them."""
        try:
            records = await self._store.list_state(KIND)
            begun = sorted(await self._store.list_state(DAY_BEGUN))
            told = await self._store.list_state(NOTIFIED)
        except StoreError as exc:
            _log.warning("fleet_records_unread", error=str(exc))
            return 0
        today = self._tracker.today()
        # a past day's crossing is never told again: its claim only grows the store
        told_before = _past({k: {"scope": k.partition("#")[0]} for k in told}, today)
        return (await self._delete(_past(records, today))
                + await self._delete(begun[:-KEEP_DAYS_BEGUN], DAY_BEGUN)
                + await self._delete(told_before, NOTIFIED))

    async def _delete(self, keys: list[str], kind: str = KIND) -> int:
        try:
            for key in keys:
                await self._store.delete_state(kind, key)
        except StoreError as exc:
            _log.warning("fleet_records_not_pruned", kind=kind, error=str(exc))
            return 0
        if keys:
            _log.info("fleet_records_pruned", kind=kind, records=len(keys))
        return len(keys)

    def _scope(self, task_id: str, name: str, today: str) -> ScopeState | None:
        """The scope ``name`` of ``task_id`` if every process counts it; a day's or a
        task's per-day scope only on that day (a past day's record is never applied)."""
        if name.startswith(("day:", "task-day:")) and not name.endswith(today):
            return None
        scope = self._tracker.scope_named(task_id, name)
        return scope if scope is not None and counts_every_process(scope) else None

    async def pass_on(self, task_id: str, decision: dict[str, Any]) -> int:
        """Store ``decision`` (a ``finish`` applied here) for the pauses other processes
        have of ``task_id``, each unless it has a decision; how many were stored.  Those
        processes apply it at their next poll, not after their decision timeout."""
        own = task_key(self._tracker.session_id, task_id)
        passed = 0
        for key in await self._store.list_state("pause"):
            if key != own and task_of_key(key)[1] == task_id:
                passed += await put_state_if_absent(self._store, "decision", key, decision)
        return passed

    async def first_to_tell_pause(self, task_id: str, scope: str, dimension: str,
                                  limit: float) -> bool:
        """Whether this process tells people that ``task_id`` paused at a budget every
        process counts: only the first pause at that scope, dimension and limit does, on
        any process (a raised limit is told anew) -- each replica holding the key's
        requests, again after each ``max_hold_s``, told the same pause.  Claimed in the
        store as the fleet's warnings are (:data:`NOTIFIED`)."""
        try:
            return await put_state_if_absent(
                self._store, NOTIFIED, f"{scope or f'task:{task_id}'}#{dimension}#paused#"
                f"{limit:.12g}", {"task_id": task_id, "session_id": self._tracker.session_id})
        except StoreError:  # who else told them is not known: told once more, not never
            return True


def _past(records: dict[str, dict[str, Any]], today: date) -> list[str]:
    """The keys of ``records`` for a day before yesterday (no process applies them)."""
    before = today - timedelta(days=1)
    out = []
    for key, value in records.items():
        day = scope_day(str(value.get("scope", "")))
        if day is not None and day < before:
            out.append(key)
    return out


def _applied(scope: ScopeState) -> set[str]:
    if scope.added is None:
        scope.added = set()
    return scope.added
