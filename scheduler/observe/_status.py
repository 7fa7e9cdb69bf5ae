"""``vibe-engine status``: the running orchestrator's snapshot, or the store's record.

A running orchestrator rewrites ``<state_dir>/status.json`` when something
changed, at most once a second (:class:`~scheduler.observe._observers.StatusWriter`).
:func:`read_status` uses it when it says ``running`` and its process is
alive; otherwise it rebuilds the same :class:`~scheduler.observe._snapshot.Snapshot`
from the store: task records with their totals, today's and the last
session's budget use, and the last events of the ``history`` records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import anyio

from scheduler.budget import ScopeState, day_limits, read_usage_file
from scheduler.config import Limits, VibeConfig
from scheduler.core import Totals, pid_runs, process_gone
from scheduler.observe._observers import status_path
from scheduler.observe._schema import StatusDoc, TaskBudgetDoc
from scheduler.observe._snapshot import (
    BudgetBar,
    Snapshot,
    TaskView,
    alert_level,
    answer_command,
    event_views,
)
from scheduler.store import (
    Store,
    latest_day_begun,
    latest_session,
    session_task_totals,
    task_key,
    task_of_key,
)
from scheduler.tasks import TaskStatus

__all__ = ["orchestrator_runs", "read_status", "snapshot_from_store", "status_document"]

#: Task states that do not change once recorded.
_ENDED = frozenset(s.value for s in TaskStatus if s.ended)


def orchestrator_runs(snap: Snapshot) -> bool:
    """Whether the process that wrote ``snap`` (a ``status.json`` saying ``running``)
    still runs: the process of its host, pid and start -- a pid the kernel gave to
    another process since is not it.  One on another host (a state directory on a shared
    disk) is not judged by this host's pids: not known to be gone, it runs.  A file that
    names no host (an older release's) is judged by its pid on this host."""
    if snap.pid <= 0:
        return False
    if not snap.host:
        return pid_runs(snap.pid)
    return not process_gone(snap.host, snap.pid, snap.proc_start)


def _status_file(state_dir: Path) -> Snapshot | None:
    try:
        return Snapshot.from_dict(json.loads(status_path(state_dir).read_text("utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _rebar(bar: BudgetBar, totals: Totals, config: VibeConfig) -> BudgetBar:
    """``bar``'s limit (as the last run configured it) with the store's current use."""
    used = _used(bar, totals)
    frac = used / bar.limit if bar.limit else 0.0
    return BudgetBar(bar.scope, bar.dimension, used, bar.limit, frac,
                     alert_level(frac, config.alerts))


def _bars(scope: ScopeState, config: VibeConfig) -> list[BudgetBar]:
    out = []
    for dim in scope.dimensions():
        limit = scope.limit(dim)
        if limit:
            used = float(scope.used(dim))
            out.append(BudgetBar(scope.name, dim, used, float(limit), used / limit,
                                 alert_level(used / limit, config.alerts)))
    return out


def _task_view(rec: dict[str, Any], totals: Any, limits: Limits | None) -> TaskView:
    frac = 0.0
    if limits is not None:
        scope = ScopeState("task", limits, totals=totals)
        frac = max((scope.used(d) / lim for d in scope.dimensions()
                    if (lim := scope.limit(d))), default=0.0)
    return TaskView(
        task_id=str(rec.get("task_id", "")), agent=str(rec.get("agent", "")),
        status=str(rec.get("status", "")), priority=str(rec.get("priority", "normal")),
        task_type=str(rec.get("task_type", "")), complexity=str(rec.get("complexity", "")),
        model=str(rec.get("model", "")), attempt=int(rec.get("attempts", 1)),
        calls=int(totals.calls), tokens=int(totals.tokens), cost_usd=float(totals.cost_usd),
        budget_fraction=frac, reason=str(rec.get("reason", "")), result=rec.get("result"),
        answer=str(rec.get("answer", "")),
    )


def _task_limits(state_dir: Path, task_id: str) -> Limits | None:
    doc = read_usage_file(state_dir / "tasks" / task_id / "usage.json")
    try:
        return None if doc is None else Limits.model_validate(doc.get("budget", {}))
    except ValueError:
        return None


async def _budgets(store: Store, session: str, today: date, config: VibeConfig,
                   last: Snapshot | None) -> tuple[list[BudgetBar], Totals]:
    """Session and day bars, use always from the store.  Limits: the last run's
    ``status.json`` when it was that session (the day's only if it was today), else the
    default config's."""
    day_name = f"day:{today.isoformat()}"
    day_totals = await store.totals(day_name)
    sess_totals = await store.totals(f"session:{session}") if session else day_totals
    scopes = {f"session:{session}": sess_totals, day_name: day_totals}
    kept: list[BudgetBar] = []
    if last is not None and last.session_id == session:
        kept = [_rebar(b, scopes[b.scope], config) for b in last.budgets if b.scope in scopes]
    bars = [b for b in kept if b.scope != day_name]
    if session and not bars:
        bars = _bars(ScopeState(f"session:{session}", config.budgets.session,
                                totals=sess_totals), config)
    day = [b for b in kept if b.scope == day_name] or _bars(
        ScopeState(day_name, day_limits(config, today), totals=day_totals), config)
    return [*bars, *day], sess_totals


def _pause_fields(task_id: str, pause: dict[str, Any], rec: dict[str, Any],
                  state_dir: Path) -> dict[str, str]:
    """Why a stored pause waits (the pause's reason, else the task record's) and the
    command that answers it."""
    answer = answer_command(task_id, str(pause.get("dimension", "")),
                            float(pause.get("used", 0.0)), float(pause.get("limit", 0.0)),
                            state_dir)
    return {"reason": str(pause.get("reason") or rec.get("reason", "")), "answer": answer}


#: The state kind of a model call in flight (``scheduler/budget/_open_calls.py``).
_OPEN_CALL = "open_call"


async def _session_tasks(store: Store, session: str, state_dir: Path) -> list[dict[str, Any]]:
    """The session's task records, each with the state it is in now that no
    orchestrator runs: a task that had not ended is ``paused`` when a pause waits for
    a decision, ``interrupted`` when it had started (it used something, saved a
    checkpoint or has a call in flight), else ``pending``."""
    paused = await store.list_state("pause")
    # a task killed during its first call has used nothing yet: only its open call says so
    in_flight = {(str(r.get("session_id")), str(r.get("task_id")))
                 for r in (await store.list_state(_OPEN_CALL)).values()}
    out = []
    for key, rec in sorted((await store.list_state("task")).items()):
        sid, tid = task_of_key(key)
        if (sid or str(rec.get("session_id", ""))) != session:
            continue
        status = str(rec.get("status", ""))
        pause = paused.get(task_key(session, tid))
        if pause is not None and status not in _ENDED:
            status = "paused"
            rec = {**rec, **_pause_fields(tid, pause, rec, state_dir)}
        elif status not in _ENDED:
            started = (status != "pending" or (session, tid) in in_flight
                       or await _started(store, session, tid))
            status = "interrupted" if started else "pending"
        out.append({**rec, "task_id": tid, "status": status})
    return out


async def _started(store: Store, session: str, task_id: str) -> bool:
    if await store.get_state("checkpoint", task_key(session, task_id)) is not None:
        return True
    return await session_task_totals(store, session, task_id) != Totals()


async def _last_session(store: Store, state_dir: Path) -> str:
    """The session started last in ``state_dir`` (any, for a store written before sessions
    were recorded: the session of the last event in the history)."""
    record = await latest_session(store, state_dir=str(await anyio.Path(state_dir).resolve()))
    record = record or await latest_session(store)
    if record is not None:
        return record.session_id
    history = sorted((await store.list_state("history")).values(),
                     key=lambda r: (float(r.get("wall", 0.0)), int(r.get("seq", 0))))
    return str(history[-1]["session_id"]) if history else ""


def _with_grouped(used: dict[str, Totals]) -> dict[str, Totals]:
    """Each task's totals, a parent's including its grouped tasks' (``KEY/NAME`` of a
    ``serve`` key ``KEY``): the store charges a grouped call to its own task only, while
    the parent's budget encloses it (R1.2), as the running view shows."""
    out = {tid: Totals() for tid in used}
    for tid, totals in used.items():
        out[tid].merge(totals)
        parent = tid.rpartition("/")[0]
        if parent in out:
            out[parent].merge(totals)
    return out


async def snapshot_from_store(
    store: Store, state_dir: Path, *, today: date, config: VibeConfig | None = None,
    events: int = 20, session: str | None = None,
) -> Snapshot:
    """Rebuild a snapshot (``running=False``) of ``session`` (default: the last one)
    from what the store recorded: every task of the session with its state and result."""
    config = config or VibeConfig()
    session = session if session is not None else await _last_session(store, state_dir)
    recs = await _session_tasks(store, session, state_dir)
    used = _with_grouped({str(rec["task_id"]): await session_task_totals(
        store, session, str(rec["task_id"])) for rec in recs})
    tasks = [_task_view(rec, used[str(rec["task_id"])],
                        _task_limits(state_dir, str(rec["task_id"]))) for rec in recs]
    history = sorted((await store.list_state("history")).values(),
                     key=lambda r: (float(r.get("wall", 0.0)), int(r.get("seq", 0))))
    budgets, totals = await _budgets(store, session, today, config, _status_file(state_dir))
    return Snapshot(
        session_id=session, at=0.0, running=False, source="store", tasks=tuple(tasks),
        budgets=tuple(budgets), events=event_views(history, events), totals=totals.to_dict(),
    )


async def _with_store_days(store: Store, snap: Snapshot) -> Snapshot:
    """The live snapshot with its per-day bars' use read from the store now: other
    processes spend on the day too, and the file is only rewritten when this run changes."""
    days = {b.scope for b in snap.budgets if b.scope.startswith(("day:", "task-day:"))}
    if not days:
        return snap
    totals = {scope: await store.totals(scope) for scope in sorted(days)}
    config = VibeConfig()  # alert levels: the run's own thresholds are not in the file
    bars = tuple(b if b.scope not in totals or _used(b, totals[b.scope]) == b.used
                 else _rebar(b, totals[b.scope], config) for b in snap.budgets)
    return replace(snap, budgets=bars)


def _used(bar: BudgetBar, totals: Totals) -> float:
    return float(ScopeState(bar.scope, Limits(), totals=totals).used(bar.dimension))


async def _with_results(store: Store, snap: Snapshot) -> Snapshot:
    """The live snapshot with the results its completed tasks stored."""
    done = [t for t in snap.tasks if t.status == "completed"]
    if not done:
        return snap
    results = {t.task_id: (await store.get_state("task", task_key(snap.session_id, t.task_id))
                           or {}).get("result") for t in done}
    return replace(snap, tasks=tuple(replace(t, result=results.get(t.task_id, t.result))
                                     for t in snap.tasks))


async def fleet_today(store: Store, today: date) -> date:
    """The day a running orchestrator on ``store`` would answer for ``today`` (the local
    date): never before the latest day any process on the store began (R1.2) -- one
    whose clock or time zone is ahead, or a wall clock set back after midnight, must not
    make ``status`` show a day the fleet has closed."""
    begun = await latest_day_begun(store, today)
    return today if begun is None else max(today, begun)


async def read_status(store: Store, state_dir: Path, *, today: date,
                      config: VibeConfig | None = None) -> Snapshot:
    """The running orchestrator's snapshot when one runs, else the store's (see module doc;
    ``config``: as :func:`snapshot_from_store`'s; ``today``: the local date, as
    :func:`fleet_today` takes it)."""
    live = _status_file(Path(state_dir))
    if live is not None and live.running and orchestrator_runs(live):
        return await _with_results(store, await _with_store_days(store, live))
    return await snapshot_from_store(store, Path(state_dir),
                                     today=await fleet_today(store, today), config=config)


def status_document(snap: Snapshot, task_budgets: Sequence[TaskBudgetDoc]) -> StatusDoc:
    """What ``status --json`` prints, whichever way ``snap`` was read (one schema)."""
    return {**snap.to_dict(), "task_budgets": list(task_budgets)}
