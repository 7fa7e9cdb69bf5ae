"""The embedded default store: one SQLite file in WAL mode.

Every ``record`` is one transaction: the event row (``INSERT OR IGNORE`` on the
idempotency key) and the per-scope totals it adds to.  With WAL and
``synchronous=NORMAL`` a committed transaction survives the process being
killed (SIGKILL); only a power loss can drop the last few commits.

The event loop never waits for the database:

* on asyncio (the production backend) every statement runs in a worker thread
  (``anyio.to_thread``), one at a time on the one connection; on other backends
  (trio, which the tests run on virtual time, where a thread in flight would let
  the mock clock jump) it runs on the loop thread — it never blocks there either:
* ``busy_timeout`` is 0, so a database locked by another connection answers
  "busy" at once; the statement is retried with ``anyio.sleep`` backoff for up to
  ``retry_s``, and a write still refused then is appended to a local fsync-ed
  spool (``<db>-spool.jsonl``, as the Redis store spools) and replayed in order,
  idempotently, before the next write, at close or at the next open — no event
  is lost, and reads see spooled state records and usage at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from scheduler.core import (
    StoreError,
    Totals,
    Usage,
    UsageEvent,
    get_logger,
    private_dir,
    private_file,
)
from scheduler.store._base import check_event, scopes_of
from scheduler.store._spool import Spool, SpooledEvent, SpooledState

_log = get_logger("vibe_engine.store.sqlite")
T = TypeVar("T")

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
#: ``{rows}``: one ``(?,…)`` per scope of the event (see :func:`scopes_of`).
_ADD_TOTALS = """
INSERT INTO totals VALUES {rows}
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
INSERT INTO model_totals VALUES {rows}
ON CONFLICT(scope, model) DO UPDATE SET tokens = tokens + excluded.tokens
"""
_EVENT_COLUMNS = (
    "event_id, task_id, session_id, day, at, agent, model, task_type, prompt_tokens, "
    "completion_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, "
    "cost_usd, file_edits, shell_commands, dangerous_commands"
)


class SqliteStore:
    """WAL-mode SQLite :class:`~scheduler.store.Store` in ``path``.

    ``retry_s`` is how long a statement is retried while the database is locked
    before a write is spooled (or a read fails); ``spool_path`` defaults to
    ``<path>-spool.jsonl``.
    """

    def __init__(self, path: str | Path, *, retry_s: float = 2.0,
                 spool_path: str | Path | None = None) -> None:
        self.path = Path(path)
        self.retry_s = retry_s
        self.spool = Spool(Path(spool_path) if spool_path is not None
                           else self.path.with_name(self.path.name + "-spool.jsonl"))
        self._db: sqlite3.Connection | None = None
        self._guard = threading.Lock()  # one statement at a time on the one connection

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
            db.execute("PRAGMA busy_timeout=0")  # never wait for a lock: we retry, async
            self._db = db
            await self._run(_init_schema)
            # SQLite gives new -wal/-shm files the db's mode; older ones kept theirs
            for extra in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + extra)
                if side.exists():
                    private_file(side)
        except (sqlite3.Error, OSError) as exc:
            if self._db is not None:
                self._db.close()
                self._db = None
            raise StoreError(f"cannot open SQLite store at {self.path}: {exc}") from exc
        await self._drain(wait=True)

    async def aclose(self) -> None:
        if self._db is None:
            return
        try:
            with anyio.CancelScope(shield=True):  # a last replay, even while cancelled
                await self._drain(wait=True)
            if len(self.spool):  # replayed at the next open
                _log.warning("sqlite_spool_pending", path=str(self.spool.path),
                             pending=len(self.spool))
        finally:
            self._db.close()
            self._db = None

    # -- running statements ------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn

        def guarded() -> T:
            with self._guard:
                return fn(db)

        if _on_asyncio():
            return await anyio.to_thread.run_sync(guarded)
        return guarded()

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, wait: bool = True) -> T:
        """Run ``fn`` on the connection, retrying with backoff while the database is
        locked (for ``retry_s``; once without ``wait``)."""
        deadline = anyio.current_time() + (self.retry_s if wait else 0.0)
        delay = 0.01
        while True:
            try:
                return await self._call(fn)
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or anyio.current_time() + delay > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], entry: SpooledEvent |
                     SpooledState, spooled: T) -> T:
        """A write, in order after any spooled ones; spooled while the database stays locked."""
        if len(self.spool):
            await self._drain(wait=False)
        if not len(self.spool):
            try:
                return await self._run(fn)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise StoreError(f"SQLite store {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        self.spool.append(entry)
        _log.warning("sqlite_write_spooled", path=str(self.path), pending=len(self.spool))
        return spooled

    async def _drain(self, *, wait: bool) -> None:
        """Replay spooled writes in order until the spool is empty or the database is busy."""
        if not len(self.spool):
            return
        done = 0
        try:
            for entry in self.spool.read():
                if isinstance(entry, SpooledEvent):
                    await self._run(functools.partial(_record, event=entry.event), wait=wait)
                else:
                    await self._run(functools.partial(
                        _put, kind=entry.kind, key=entry.key, value=entry.value), wait=wait)
                done += 1
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        finally:
            if done:
                self.spool.drop_first(done)
                _log.info("sqlite_spool_replayed", path=str(self.path), writes=done,
                          pending=len(self.spool))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if len(self.spool):
            await self._drain(wait=False)
        try:
            return await self._run(fn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    # -- usage -------------------------------------------------------------------------

    async def record(self, event: UsageEvent) -> bool:
        check_event(event)
        return await self._write(lambda db: _record(db, event), SpooledEvent(event), True)

    async def totals(self, scope: str) -> Totals:
        totals = await self._read(lambda db: _totals(db, scope))
        for entry in self.spool.read() if len(self.spool) else ():
            if isinstance(entry, SpooledEvent) and scope in scopes_of(entry.event):
                totals.add(entry.event)  # recorded once the database answers again
        return totals

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
        sql = f"SELECT {_EVENT_COLUMNS} FROM events{where} ORDER BY at, rowid"
        rows = await self._read(lambda db: db.execute(sql, args).fetchall())
        return [_row_to_event(r) for r in rows]

    # -- state -------------------------------------------------------------------------

    async def put_state(self, kind: str, key: str, value: dict[str, Any]) -> None:
        await self._write(lambda db: _put(db, kind, key, value),
                          SpooledState(kind, key, value), None)

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None:
        spooled = self._spooled_state(kind)
        if key in spooled:
            value: dict[str, Any] | None = spooled[key]
            return value
        row = await self._read(lambda db: db.execute(
            "SELECT value FROM state WHERE kind = ? AND key = ?", (kind, key)).fetchone())
        return json.loads(row[0]) if row else None

    async def list_state(self, kind: str) -> dict[str, dict[str, Any]]:
        rows = await self._read(lambda db: db.execute(
            "SELECT key, value FROM state WHERE kind = ? ORDER BY key", (kind,)).fetchall())
        out = {k: json.loads(v) for k, v in rows}
        for key, value in self._spooled_state(kind).items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return dict(sorted(out.items()))

    async def delete_state(self, kind: str, key: str) -> None:
        await self._write(lambda db: _put(db, kind, key, None),
                          SpooledState(kind, key, None), None)

    def _spooled_state(self, kind: str) -> dict[str, Any]:
        """State writes still in the spool, last write per key (None: deleted)."""
        if not len(self.spool):
            return {}
        return {e.key: e.value for e in self.spool.read()
                if isinstance(e, SpooledState) and e.kind == kind}


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _init_schema(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)


def _record(db: sqlite3.Connection, event: UsageEvent) -> bool:
    """One transaction: the event row and the totals of its scopes (``False``: a duplicate)."""
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
        db.execute(_ADD_TOTALS.format(rows=", ".join(["(?,?,?,?,?,?,?,?,?,?)"] * len(scopes))),
                   [v for scope in scopes for v in (scope, *amounts)])
        if event.model:
            total = u.total_tokens
            db.execute(_ADD_MODEL.format(rows=", ".join(["(?,?,?)"] * len(scopes))),
                       [v for sc in scopes for v in (sc, event.model, total)])
        db.execute("COMMIT")
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return True


def _totals(db: sqlite3.Connection, scope: str) -> Totals:
    row = db.execute(
        "SELECT prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens, "
        "cost_usd, file_edits, shell_commands, dangerous_commands, calls "
        "FROM totals WHERE scope = ?",
        (scope,),
    ).fetchone()
    if row is None:
        return Totals()
    by_model = dict(db.execute("SELECT model, tokens FROM model_totals WHERE scope = ?",
                               (scope,)))
    (p, c, cr, cw, cost, fe, sh, dg, calls) = row
    return Totals(p, c, cr, cw, cost, fe, sh, dg, calls, by_model)


def _put(db: sqlite3.Connection, kind: str, key: str, value: dict[str, Any] | None) -> None:
    if value is None:
        db.execute("DELETE FROM state WHERE kind = ? AND key = ?", (kind, key))
    else:
        db.execute(
            "INSERT INTO state VALUES (?,?,?) ON CONFLICT(kind, key) DO UPDATE SET "
            "value = excluded.value",
            (kind, key, json.dumps(value, sort_keys=True)),
        )


def _row_to_event(r: tuple[Any, ...]) -> UsageEvent:
    return UsageEvent(
        event_id=r[0], task_id=r[1], session_id=r[2], day=r[3], at=r[4], agent=r[5],
        model=r[6], task_type=r[7],
        usage=Usage(r[8], r[9], r[10], r[11], r[12]),
        cost_usd=r[13], file_edits=r[14], shell_commands=r[15], dangerous_commands=r[16],
    )
