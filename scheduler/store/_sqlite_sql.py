"""The SQLite ledger's schema and statements (run on the store's one connection).

Each function takes the connection and runs on whatever thread the store runs
statements on; none of them waits for a lock (``busy_timeout`` is 0), so a
locked database surfaces as ``sqlite3.OperationalError`` for the store to retry.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import accumulate
from typing import Any

import anyio

from scheduler.core import Usage, UsageEvent, loop_time, off_loop
from scheduler.store._base import ESTIMATED_CHARGE, OPEN_CALL, REPLACED, scopes_of
from scheduler.store._spool import SpooledEvent, SpooledState
from scheduler.store._sqlite_totals import ADD_MODEL, ADD_TOTALS, add_totals, totals_of

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
CREATE TABLE IF NOT EXISTS open_calls (
    key TEXT PRIMARY KEY,
    event_id TEXT, task_id TEXT, session_id TEXT, day TEXT, agent TEXT, task_type TEXT,
    model TEXT, prompt_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, host TEXT,
    pid INTEGER, run TEXT, day_scope TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (
    hold_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    model TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    expires_at REAL NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    PRIMARY KEY (hold_id, scope)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holds_expiry ON holds(expires_at);
CREATE TABLE IF NOT EXISTS hold_sums (
    scope TEXT NOT NULL,
    model TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (scope, model)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS hold_added AFTER INSERT ON holds BEGIN
    INSERT INTO hold_sums VALUES (NEW.scope, NEW.model, NEW.tokens, NEW.cost_usd, 1)
    ON CONFLICT(scope, model) DO UPDATE SET tokens = tokens + excluded.tokens,
        cost_usd = cost_usd + excluded.cost_usd, n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS hold_ended AFTER DELETE ON holds BEGIN
    UPDATE hold_sums SET tokens = tokens - OLD.tokens, cost_usd = cost_usd - OLD.cost_usd,
        n = n - 1 WHERE scope = OLD.scope AND model = OLD.model;
    DELETE FROM hold_sums WHERE scope = OLD.scope AND model = OLD.model AND n <= 0;
END;
"""
#: Ends a shared budget hold (``_sqlite_holds``) in every scope: its key's prefix.
DELETE_HOLD = "DELETE FROM holds WHERE hold_id = ?"

#: ``OPEN_CALL``, the state kind of a model call in flight (``_base``): every
#: call writes one record before it goes out and deletes it when settled, so a record of
#: these fields and types is a row of its own table (one B-tree, bound values, no JSON);
#: a record of any other shape is kept as JSON like every other kind.
OPEN_CALL_FIELDS = (
    "event_id", "task_id", "session_id", "day", "agent", "task_type", "model",
    "prompt_tokens", "output_tokens", "cost_usd", "host", "pid", "run", "day_scope",
)
_N_OPEN_CALL_FIELDS = len(OPEN_CALL_FIELDS)
# the key's type, then each field's: what round-trips through the columns unchanged
_OPEN_CALL_TYPES = (str, str, str, str, str, str, str, str, int, int, float, str, int, str,
                    str)
_PUT_OPEN = (f"INSERT OR REPLACE INTO open_calls VALUES "
             f"({','.join('?' * (len(OPEN_CALL_FIELDS) + 1))})")

_DELETE_OPEN = "DELETE FROM open_calls WHERE key = ?"
_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
EVENT_COLUMNS = (
    "event_id, task_id, session_id, day, at, agent, model, task_type, prompt_tokens, "
    "completion_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, "
    "cost_usd, file_edits, shell_commands, dangerous_commands"
)


def busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says another connection holds the lock (worth retrying)."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def init_schema(db: sqlite3.Connection) -> None:
    # WAL + synchronous=NORMAL: a commit is a write() to the WAL file, so a committed
    # transaction survives the process being killed; only a power loss or OS crash
    # can drop the last commits (FULL would fsync every commit to survive that too).
    # 2 KiB pages (a new file's; an existing one keeps its own): a commit writes each page
    # it changed whole into the WAL, and the charges of many tasks committed together
    # change a page per task in the indexes of ``events`` and ``totals``
    db.execute("PRAGMA page_size=2048")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)


async def create_schema(db: sqlite3.Connection, wait_s: float) -> None:
    """:func:`init_schema` off the loop (it may recover a large WAL a killed run left),
    waiting up to ``wait_s`` for the lock: processes started together on a new file all
    create it, and SQLite answers "locked" at once, without waiting, to one of two
    connections that each read the file and then want to write it (the switch to WAL):
    tried again then."""
    db.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
    deadline = loop_time() + wait_s
    delay = 0.005
    while True:
        try:
            return await off_loop(init_schema, db)
        except sqlite3.OperationalError as exc:
            if not busy(exc) or loop_time() + delay > deadline:
                raise
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """The block as ONE write transaction (``BEGIN IMMEDIATE``: the write lock first):
    committed when it ends, rolled back when anything in it fails (a Python error too: an
    open transaction would refuse the next ``BEGIN``)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def apply(db: sqlite3.Connection, entries: list[SpooledEvent | SpooledState]) -> list[Any]:
    """Write ``entries`` in order in ONE transaction: all of them or (on error) none.

    An event answers ``RECORDED`` when recorded, ``REPEATED`` (0) when its ``event_id``
    was already there (it is then not added to any total again), ``REPLACED`` when it
    closes an open call charged at its estimate meanwhile (see ``_base``); a state
    write ``None``.  An event's ``hold_id`` (the shared budget hold of its call) is
    deleted with it; a recorded event naming that hold's scopes (``fleet``) answers
    ``store.Settled``, with every process's totals of those scopes after the batch.
    """
    with write_transaction(db):
        return apply_in(db, entries)


def apply_in(db: sqlite3.Connection,
             entries: list[SpooledEvent | SpooledState]) -> list[Any]:
    """:func:`apply` inside a transaction the caller opened."""
    # the events, and the open calls closed (each call's record, deleted with its
    # event), written together after the loop: tables of their own, a statement run for
    # all of them (an open call's record is written before its key's earlier deletes)
    events: list[UsageEvent] = []
    holds: list[tuple[str]] = []
    fleet: set[str] = set()  # the scopes of those holds (their totals answer the settles)
    closes: list[str] = []
    closing: set[str] = set()
    gone: set[str] = set()  # open calls closed whose record was not there
    # state rows waiting to be written, in order, by one statement run for them all (a
    # task's start and end and its events are rows of their own, thousands a run)
    puts: list[tuple[str, str, str]] = []
    # open calls' rows waiting to be written (a burst of calls going out: one statement
    # run for them all), by key: a close of one of them writes them first
    opens: dict[str, list[Any]] = {}
    for entry in entries:
        if isinstance(entry, SpooledEvent):
            events.append(entry.event)
            if entry.hold_id:  # the call's shared hold ends with its charge (a repeat too)
                holds.append((entry.hold_id,))
                fleet.update(entry.fleet)
        elif entry.kind == OPEN_CALL and entry.row is not None:
            if entry.key in closing:  # its earlier close first
                gone |= _close_all(db, closes, closing)
            opens[entry.key] = entry.row  # (a key's last write is the one kept)
        elif entry.kind == OPEN_CALL and entry.value is None:
            if entry.key in opens:
                _open_all(db, opens)
            closes.append(entry.key)
            closing.add(entry.key)
        elif entry.value is None or entry.kind == OPEN_CALL:
            _put_all(db, puts)  # in order: an open call's row is not a state row
            if entry.kind == OPEN_CALL:
                _open_all(db, opens)
                if entry.key in closing:
                    gone |= _close_all(db, closes, closing)
            put(db, entry.kind, entry.key, entry.value, entry.text, entry.row)
        else:
            puts.append((entry.kind, entry.key,
                         entry.text or json.dumps(entry.value, sort_keys=True)))
    _put_all(db, puts)
    _open_all(db, opens)
    gone |= _close_all(db, closes, closing)
    added = _insert_events(db, events)
    if holds:
        db.executemany(DELETE_HOLD, holds)
    fresh = events if all(added) else [ev for ev, new in zip(events, added, strict=True) if new]
    if fresh:
        add_totals(db, fresh)
    if gone:  # rare: a call charged at its estimate while its process was frozen
        added = [REPLACED if new and ev.event_id in gone and take_back_estimate(
            db, ev.event_id) else new for ev, new in zip(events, added, strict=True)]
    if not events:  # a batch of state writes (calls going out): no answer to place
        return [None] * len(entries)
    answers = iter(added)
    out = [next(answers) if type(e) is SpooledEvent else None for e in entries]
    return out if not fleet else settled(db, entries, out, fleet)


def settled(db: sqlite3.Connection, entries: list[SpooledEvent | SpooledState],
            out: list[Any], scopes: set[str]) -> list[Any]:
    """``out`` with the answer of each held event recorded as ``store.Settled``: every
    process's totals of its hold's scopes, read once per scope for the batch, after it
    (what its charge's alerts count, R3.1)."""
    read = {scope: totals_of(db, scope) for scope in scopes}
    return [(answer, (), read) if answer and type(e) is SpooledEvent and e.fleet else answer
            for e, answer in zip(entries, out, strict=True)]


def charge_open_call(db: sqlite3.Connection, estimate: UsageEvent, key: str,
                     mark: dict[str, Any]) -> bool:
    """See ``store.charge_open_call``: one transaction."""
    with write_transaction(db):
        if not _delete_open(db, key):
            return False  # settled (or charged) meanwhile
        if db.execute("SELECT 1 FROM events WHERE event_id = ?", (key,)).fetchone():
            return False  # its usage was recorded before its process died
        return bool(apply_in(db, [SpooledEvent(estimate),
                                  SpooledState(ESTIMATED_CHARGE, key, mark)])[0])


def take_back_estimate(db: sqlite3.Connection, key: str) -> bool:
    """Remove the estimate charged for the open call ``key`` (see ``_base``): its event,
    its amounts from the totals of its scopes, its ``estimated_charge`` record."""
    where = (ESTIMATED_CHARGE, key)
    row = db.execute("SELECT value FROM state WHERE kind = ? AND key = ?", where).fetchone()
    if row is None:
        return False
    db.execute("DELETE FROM state WHERE kind = ? AND key = ?", where)
    mark = json.loads(row[0])
    charged = str(mark.get("charged_event_id", ""))
    found = db.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?",
                       (charged,)).fetchone()
    if found is None:
        return False
    db.execute("DELETE FROM events WHERE event_id = ?", (charged,))
    e = row_to_event(found)
    u = e.usage
    less = (-u.prompt_tokens, -u.completion_tokens, -u.cache_read_tokens,
            -u.cache_write_tokens, -e.cost_usd, -e.file_edits, -e.shell_commands,
            -e.dangerous_commands, -1 if e.model else 0)
    scopes = mark.get("scopes") or scopes_of(e)
    db.executemany(ADD_TOTALS, [(scope, *less) for scope in scopes])
    if e.model:
        db.executemany(ADD_MODEL, [(scope, e.model, -u.total_tokens) for scope in scopes])
    return True


def _insert_events(db: sqlite3.Connection, events: list[UsageEvent]) -> list[int]:
    """Insert ``events`` in order: whether each was new (its ``event_id`` not there yet).
    All at once when all are (the usual case, seen from the count of rows inserted);
    else again one by one, from a savepoint before them."""
    if len(events) <= 1:
        return [db.execute(_INSERT_EVENT, _event_row(e)).rowcount == 1 for e in events]
    db.execute("SAVEPOINT events")
    if db.executemany(_INSERT_EVENT, map(_event_row, events)).rowcount == len(events):
        db.execute("RELEASE events")
        return [True] * len(events)
    db.execute("ROLLBACK TO events")
    db.execute("RELEASE events")
    return [db.execute(_INSERT_EVENT, _event_row(e)).rowcount == 1 for e in events]


def _close_all(db: sqlite3.Connection, keys: list[str], pending: set[str]) -> set[str]:
    """Delete the open calls ``keys`` (then forget them): one statement for all their
    rows; a key without a row of its own (a record kept as JSON) is deleted as
    :func:`put` deletes it.  Returns the keys that had no record."""
    if not keys:
        return set()
    deleted = db.executemany(_DELETE_OPEN, [(k,) for k in keys]).rowcount
    gone = set()
    if deleted != len(keys):  # some record is not a row (or the key came twice)
        gone = {k for k in keys if not _delete_open(db, k)}
    keys.clear()
    pending.clear()
    return gone


def _delete_open(db: sqlite3.Connection, key: str) -> bool:
    """Delete the open call ``key``'s record, a row or JSON; whether there was one."""
    if db.execute(_DELETE_OPEN, (key,)).rowcount:
        return True
    return bool(db.execute("DELETE FROM state WHERE kind = ? AND key = ?",
                           (OPEN_CALL, key)).rowcount)


def _event_row(event: UsageEvent) -> tuple[Any, ...]:
    u = event.usage
    return (
        event.event_id, event.task_id, event.session_id, event.day, event.at,
        event.agent, event.model, event.task_type, u.prompt_tokens,
        u.completion_tokens, u.cache_read_tokens, u.cache_write_5m_tokens,
        u.cache_write_1h_tokens, event.cost_usd, event.file_edits,
        event.shell_commands, event.dangerous_commands,
    )


_PUT = ("INSERT INTO state VALUES (?,?,?) ON CONFLICT(kind, key) DO UPDATE SET "
        "value = excluded.value")


def open_call_row(key: str, value: dict[str, Any]) -> list[Any] | None:
    """The ``open_calls`` row of an open call's record, or None for a record of another
    shape (it is kept as JSON).  A list, not a tuple: CPython keeps up to 2,000 freed
    tuples of each length for reuse, and few other tuples have these rows' 15 fields, so
    the rows of a burst of calls stayed allocated (0.16 KiB per agent of a run's peak)."""
    if len(value) != _N_OPEN_CALL_FIELDS:
        return None
    if tuple(value) == OPEN_CALL_FIELDS:  # keys in the columns' order (the tracker's)
        row = [key, *value.values()]
    else:
        try:
            row = [key, *[value[f] for f in OPEN_CALL_FIELDS]]
        except KeyError:
            return None
    # exact types (a bool is no int here): a tuple of types compares them by identity
    return row if tuple(map(type, row)) == _OPEN_CALL_TYPES else None


def open_calls_of(db: sqlite3.Connection, key: str | None = None) -> dict[str, dict[str, Any]]:
    """The records of the ``open_calls`` table (``key``'s only, if given), by key."""
    sql = f"SELECT key, {', '.join(OPEN_CALL_FIELDS)} FROM open_calls"
    rows = db.execute(sql + " WHERE key = ?", (key,)) if key is not None else db.execute(sql)
    return {k: dict(zip(OPEN_CALL_FIELDS, rest, strict=True)) for k, *rest in rows}


def put(db: sqlite3.Connection, kind: str, key: str, value: dict[str, Any] | None,
        text: str = "", row: list[Any] | None = None) -> None:
    """Write (``value``) or delete (None) one state record; ``text``: ``value`` encoded,
    ``row``: its ``open_calls`` row, when the writer made them already."""
    if kind == OPEN_CALL:
        if value is None:
            if db.execute(_DELETE_OPEN, (key,)).rowcount:
                return  # the usual case: no JSON record of the key to delete as well
        elif row is not None or (row := open_call_row(key, value)) is not None:
            db.execute(_PUT_OPEN, row)
            return
    if value is None:
        db.execute("DELETE FROM state WHERE kind = ? AND key = ?", (kind, key))
    else:
        db.execute(_PUT, (kind, key, text or json.dumps(value, sort_keys=True)))


def _open_all(db: sqlite3.Connection, rows: dict[str, list[Any]]) -> None:
    """Write the open calls' ``rows`` (by key), then forget them."""
    if rows:
        db.executemany(_PUT_OPEN, rows.values())
        rows.clear()


def _put_all(db: sqlite3.Connection, rows: list[tuple[str, str, str]]) -> None:
    """Write the ``(kind, key, text)`` state rows in order, then forget them."""
    if rows:
        db.executemany(_PUT, rows)
        rows.clear()


def row_to_event(r: tuple[Any, ...]) -> UsageEvent:
    return UsageEvent(
        event_id=r[0], task_id=r[1], session_id=r[2], day=r[3], at=r[4], agent=r[5],
        model=r[6], task_type=r[7],
        usage=Usage(r[8], r[9], r[10], r[11], r[12]),
        cost_usd=r[13], file_edits=r[14], shell_commands=r[15], dangerous_commands=r[16],
    )


def firsts(writes: list[Any], done: list[Any]) -> list[Any]:
    """Each write's outcome (a write: a sequence of entries) from ``apply``'s one per
    entry: its first entry's."""
    if len(done) == len(writes):
        return list(done)
    # each write's first entry's index: the running sum of the writes' lengths
    return list(map(done.__getitem__, accumulate(map(len, writes[:-1]), initial=0)))
