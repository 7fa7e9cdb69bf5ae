"""The embedded default store: one SQLite file in WAL mode.

Every ``record`` is one transaction: the event row (``INSERT OR IGNORE`` on the
idempotency key) and the per-scope totals it adds to.  With WAL and
``synchronous=NORMAL`` a committed transaction survives the process being
killed (SIGKILL); only a power loss can drop the last few commits.

Statements run on the event-loop thread: each is a few tens of microseconds
against a local file, cheaper than a hop to a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from scheduler.core import StoreError, Totals, Usage, UsageEvent, private_dir, private_file
from scheduler.store._base import scopes_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    day TEXT NOT NULL,
    at REAL NOT NULL,
    agent TEXT NOT NULL,
    model TEXT NOT NULL,
    task_type TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_5m_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    file_edits INTEGER NOT NULL,
    shell_commands INTEGER NOT NULL,
    dangerous_commands INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_task ON events(task_id);
CREATE INDEX IF NOT EXISTS events_day ON events(day);
CREATE TABLE IF NOT EXISTS totals (
    scope TEXT PRIMARY KEY,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    file_edits INTEGER NOT NULL DEFAULT 0,
    shell_commands INTEGER NOT NULL DEFAULT 0,
    dangerous_commands INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS model_totals (
    scope TEXT NOT NULL,
    model TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, model)
);
CREATE TABLE IF NOT EXISTS state (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
"""

_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_ADD_TOTALS = """
INSERT INTO totals VALUES (?,?,?,?,?,?,?,?,?,?), (?,?,?,?,?,?,?,?,?,?), (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(scope) DO UPDATE SET
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
    cost_usd = cost_usd + excluded.cost_usd,
    file_edits = file_edits + excluded.file_edits,
    shell_commands = shell_commands + excluded.shell_commands,
    dangerous_commands = dangerous_commands + excluded.dangerous_commands,
    calls = calls + excluded.calls
"""
_ADD_MODEL = """
INSERT INTO model_totals VALUES (?,?,?), (?,?,?), (?,?,?)
ON CONFLICT(scope, model) DO UPDATE SET tokens = tokens + excluded.tokens
"""
_EVENT_COLUMNS = (
    "event_id, task_id, session_id, day, at, agent, model, task_type, prompt_tokens, "
    "completion_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, "
    "cost_usd, file_edits, shell_commands, dangerous_commands"
)


class SqliteStore:
    """WAL-mode SQLite :class:`~scheduler.store.Store` in ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"SqliteStore({self.path}) is not open; call open() first")
        return self._db

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            private_dir(self.path.parent)
            private_file(self.path)  # before SQLite creates it with the umask's mode
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            # SQLite gives new -wal/-shm files the db's mode; older ones kept theirs
            for extra in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + extra)
                if side.exists():
                    private_file(side)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store at {self.path}: {exc}") from exc
        self._db = db

    async def aclose(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def record_nowait(self, event: UsageEvent) -> bool:
        db = self._conn
        u = event.usage
        try:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                _INSERT_EVENT,
                (
                    event.event_id, event.task_id, event.session_id, event.day, event.at,
                    event.agent, event.model, event.task_type, u.prompt_tokens,
                    u.completion_tokens, u.cache_read_tokens, u.cache_write_5m_tokens,
                    u.cache_write_1h_tokens, event.cost_usd, event.file_edits,
                    event.shell_commands, event.dangerous_commands,
                ),
            )
            if cur.rowcount == 0:
                db.execute("ROLLBACK")
                return False
            calls = 1 if event.model else 0
            scopes = scopes_of(event)
            amounts = (
                u.prompt_tokens, u.completion_tokens, u.cache_read_tokens,
                u.cache_write_tokens, event.cost_usd, event.file_edits,
                event.shell_commands, event.dangerous_commands, calls,
            )
            db.execute(_ADD_TOTALS, [v for scope in scopes for v in (scope, *amounts)])
            if event.model:
                total = u.total_tokens
                db.execute(_ADD_MODEL, [v for sc in scopes for v in (sc, event.model, total)])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"cannot record event {event.event_id}: {exc}") from exc
        return True

    async def record(self, event: UsageEvent) -> bool:
        return self.record_nowait(event)

    async def totals(self, scope: str) -> Totals:
        db = self._conn
        row = db.execute(
            "SELECT prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens, "
            "cost_usd, file_edits, shell_commands, dangerous_commands, calls "
            "FROM totals WHERE scope = ?",
            (scope,),
        ).fetchone()
        if row is None:
            return Totals()
        by_model = dict(
            db.execute("SELECT model, tokens FROM model_totals WHERE scope = ?", (scope,))
        )
        (p, c, cr, cw, cost, fe, sh, dg, calls) = row
        return Totals(p, c, cr, cw, cost, fe, sh, dg, calls, by_model)

    async def events(
        self,
        *,
        task_id: str | None = None,
        day_from: str | None = None,
        day_to: str | None = None,
    ) -> list[UsageEvent]:
        clauses: list[str] = []
        args: list[Any] = []
        if task_id is not None:
            clauses.append("task_id = ?")
            args.append(task_id)
        if day_from is not None:
            clauses.append("day >= ?")
            args.append(day_from)
        if day_to is not None:
            clauses.append("day <= ?")
            args.append(day_to)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events{where} ORDER BY at, rowid", args
        ).fetchall()
        return [_row_to_event(r) for r in rows]

    async def put_state(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO state VALUES (?,?,?) ON CONFLICT(kind, key) DO UPDATE SET "
            "value = excluded.value",
            (kind, key, json.dumps(value, sort_keys=True)),
        )

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT value FROM state WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        return json.loads(row[0]) if row else None

    async def list_state(self, kind: str) -> dict[str, dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT key, value FROM state WHERE kind = ? ORDER BY key", (kind,)
        ).fetchall()
        return {k: json.loads(v) for k, v in rows}

    async def delete_state(self, kind: str, key: str) -> None:
        self._conn.execute("DELETE FROM state WHERE kind = ? AND key = ?", (kind, key))


def _row_to_event(r: tuple[Any, ...]) -> UsageEvent:
    return UsageEvent(
        event_id=r[0], task_id=r[1], session_id=r[2], day=r[3], at=r[4], agent=r[5],
        model=r[6], task_type=r[7],
        usage=Usage(r[8], r[9], r[10], r[11], r[12]),
        cost_usd=r[13], file_edits=r[14], shell_commands=r[15], dangerous_commands=r[16],
    )
