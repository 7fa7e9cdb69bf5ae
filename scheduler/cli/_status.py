"""``vibe-engine status``: gather one :class:`~scheduler.observe._schema.StatusDoc` and
show it.

The document is the same whether a running orchestrator's ``status.json`` or the
store supplied the snapshot: the session and day bars stay in ``budgets`` and each
task's own rows (from its ``usage.json`` and the store) are ``task_budgets``.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import cast

from rich.console import Console
from rich.table import Table
from rich.text import Text

from scheduler.cli._checks import status_store
from scheduler.cli._decide import stored_status_rows
from scheduler.config import VibeConfig
from scheduler.observe import Snapshot, render_snapshot
from scheduler.observe._schema import StatusDoc, TaskBudgetDoc
from scheduler.observe._status import read_status, status_document
from scheduler.observe._text import amount, clip, percent
from scheduler.store import open_store

__all__ = ["gather_status", "print_status", "task_budget_table"]

_LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "red", "exceeded": "bold red"}


async def gather_status(state_dir: Path, store: str, *, today: date,
                        config: VibeConfig | None = None) -> StatusDoc:
    """The running orchestrator's snapshot (else the store's) and every task's budget rows;
    ``config`` (the run's, ``-c``): today's day limits when the store's snapshot has none."""
    st = open_store(status_store(state_dir, store), state_dir, replay_spool=False)
    await st.open()
    try:
        snap = await read_status(st, state_dir, today=today, config=config)
        rows = await stored_status_rows(st, state_dir)
        return status_document(snap, [cast(TaskBudgetDoc, r.to_dict()) for r in rows])
    finally:
        await st.aclose()


def task_budget_table(rows: list[TaskBudgetDoc]) -> Table:
    """R3: each task's own budget use per dimension with its alert level."""
    table = Table(title="Task budgets", title_justify="left")
    for col in ("task", "dimension", "used", "limit", "%", "level"):
        table.add_column(col, justify="right" if col in ("used", "limit", "%") else "left",
                         no_wrap=col != "task")
    # a paused task is said to be paused once, on its fullest row (the likeliest cause)
    noted: dict[str, int] = {}
    for i, r in enumerate(rows):
        first = noted.get(r["task_id"])
        if r["paused"] and (first is None or r["fraction"] > rows[first]["fraction"]):
            noted[r["task_id"]] = i
    for i, r in enumerate(rows):
        level = Text(r["level"], style=_LEVEL_STYLE.get(r["level"], ""))
        if noted.get(r["task_id"]) == i:
            level.append(" (paused)", style="magenta")
        dim = r["dimension"]
        table.add_row(r["task_id"], _dimension_label(r), amount(r["used"], dim),
                      amount(r["limit"], dim), percent(r["fraction"]), level)
    return table


def _dimension_label(row: TaskBudgetDoc) -> str:
    """The dimension, with the day for a per-day budget's row (a serve key's
    ``day_budget``): without it the key's own ``cost_usd`` row and its day's look alike."""
    if row["scope"].startswith("task-day:"):
        return f"{row['dimension']} (day {row['scope'].rsplit(':', 1)[1]})"
    return row["dimension"]


def print_status(doc: StatusDoc, console: Console) -> None:
    """The snapshot's screen (session and day bars under Budgets), the task budget rows
    and what completed agents returned."""
    snap = Snapshot.from_dict(doc)
    console.print(render_snapshot(snap, width=console.width, clock_times=True))
    if doc["task_budgets"]:
        console.print(task_budget_table(doc["task_budgets"]))
    results = Table(title="Results", title_justify="left")
    for col in ("task", "result"):
        results.add_column(col)
    for t in snap.tasks:
        if t.result is not None:
            results.add_row(t.task_id, Text(clip(json.dumps(t.result), 100)))
    if results.row_count:
        console.print(results)
