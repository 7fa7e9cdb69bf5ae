"""The SQLite ledger's per-scope totals (``totals``, ``model_totals``): what a batch of
new events adds to them, and what a scope's totals are."""

from __future__ import annotations

import sqlite3
from functools import reduce
from operator import add
from typing import Any

from scheduler.core import Totals, UsageEvent
from scheduler.store._base import scopes_of

_TOTAL_COLUMNS = (
    "prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens, cost_usd, "
    "file_edits, shell_commands, dangerous_commands, calls"
)
_SET_TOTALS = f"""
INSERT INTO totals (scope, {_TOTAL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(scope) DO UPDATE SET
    ({_TOTAL_COLUMNS}) = (excluded.prompt_tokens, excluded.completion_tokens,
    excluded.cache_read_tokens, excluded.cache_write_tokens, excluded.cost_usd,
    excluded.file_edits, excluded.shell_commands, excluded.dangerous_commands, excluded.calls)
"""
ADD_TOTALS = f"""
INSERT INTO totals (scope, {_TOTAL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(scope) DO UPDATE SET
    ({_TOTAL_COLUMNS}) = (prompt_tokens + excluded.prompt_tokens,
    completion_tokens + excluded.completion_tokens,
    cache_read_tokens + excluded.cache_read_tokens,
    cache_write_tokens + excluded.cache_write_tokens, cost_usd + excluded.cost_usd,
    file_edits + excluded.file_edits, shell_commands + excluded.shell_commands,
    dangerous_commands + excluded.dangerous_commands, calls + excluded.calls)
"""
_SCOPES_PER_SELECT = 500  # well under SQLite's limit on bound parameters
ADD_MODEL = """
INSERT INTO model_totals VALUES (?,?,?)
ON CONFLICT(scope, model) DO UPDATE SET tokens = tokens + excluded.tokens
"""


def add_totals(db: sqlite3.Connection, fresh: list[UsageEvent]) -> None:
    """Add ``fresh`` events to their scopes' totals, one row write per scope and per
    (scope, model) for the whole batch.  A scope several events add to is read once
    and summed here in event order, one addition at a time, as a commit per event
    would: the same floats to the bit."""
    per_scope: dict[str, list[tuple[Any, ...]]] = {}
    models: dict[tuple[str, str], int] = {}
    for event in fresh:
        u = event.usage
        model = event.model
        # the usage's fields read once each (no property frames: every charge is here)
        prompt, out, read = u.prompt_tokens, u.completion_tokens, u.cache_read_tokens
        write = u.cache_write_5m_tokens + u.cache_write_1h_tokens
        amounts = (prompt, out, read, write, event.cost_usd, event.file_edits,
                   event.shell_commands, event.dangerous_commands, 1 if model else 0)
        scopes = scopes_of(event)
        for scope in scopes:
            if scope in per_scope:
                per_scope[scope].append(amounts)
            else:
                per_scope[scope] = [amounts]
        if model:
            tokens = prompt + out + read + write  # ``total_tokens``, once per event
            for scope in scopes:
                key = (scope, model)
                models[key] = models.get(key, 0) + tokens
    once = [(scope, *adds[0]) for scope, adds in per_scope.items() if len(adds) == 1]
    if once:  # the database adds a single amount itself: no read needed
        db.executemany(ADD_TOTALS, once)
    if len(once) < len(per_scope):
        shared = [scope for scope, adds in per_scope.items() if len(adds) > 1]
        sums = _current_totals(db, shared)
        for scope in shared:
            # per column, left to right from the stored total: sum() where it adds ints
            # only (exact, in any order: an int result says no float was added), else
            # reduce (a plain add per amount, never sum()'s compensated float addition)
            columns = zip(*per_scope[scope], strict=True)
            sums[scope] = [s if type(s := sum(column, total)) is int
                           else reduce(add, column, total)
                           for total, column in zip(sums[scope], columns, strict=True)]
        db.executemany(_SET_TOTALS, [(scope, *row) for scope, row in sums.items()])
    if models:
        db.executemany(ADD_MODEL, [(s, m, tokens) for (s, m), tokens in models.items()])


def _current_totals(db: sqlite3.Connection, scopes: list[str]) -> dict[str, list[Any]]:
    sums: dict[str, list[Any]] = {s: [0, 0, 0, 0, 0.0, 0, 0, 0, 0] for s in scopes}
    for i in range(0, len(scopes), _SCOPES_PER_SELECT):
        chunk = scopes[i:i + _SCOPES_PER_SELECT]
        marks = ",".join("?" * len(chunk))
        for scope, *row in db.execute(
                f"SELECT scope, {_TOTAL_COLUMNS} FROM totals WHERE scope IN ({marks})", chunk):
            sums[scope] = row
    return sums


def totals_of(db: sqlite3.Connection, scope: str) -> Totals:
    row = db.execute(
        f"SELECT {_TOTAL_COLUMNS} FROM totals WHERE scope = ?",
        (scope,),
    ).fetchone()
    if row is None:
        return Totals()
    by_model = dict(db.execute("SELECT model, tokens FROM model_totals WHERE scope = ?",
                               (scope,)))
    (p, c, cr, cw, cost, fe, sh, dg, calls) = row
    return Totals(p, c, cr, cw, cost, fe, sh, dg, calls, by_model)
