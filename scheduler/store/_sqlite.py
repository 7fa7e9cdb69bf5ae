"""The embedded default store: one SQLite file in WAL mode.

Durability promise: ``record``, ``put_state`` and ``delete_state`` return only
once their write is committed (or fsync-ed to the spool, below).  With WAL and
``synchronous=NORMAL`` a commit is a ``write()`` into the WAL file, so an
acknowledged write survives the process being killed (SIGKILL, OOM kill, a
crash); a power loss or OS crash may drop the last commits before a checkpoint.

Group commit: writes made in the same turn of the event loop, or while another
write is being committed, wait and are then committed together, in order, in one
transaction (``_group.GroupCommit``) — one commit for many concurrent charges,
each caller still woken only once its own write is committed.  An event row
(``INSERT OR IGNORE`` on the idempotency key) and the per-scope totals it adds to
are always in the same transaction.  A write that fails (not a lock) fails only
its own caller: the batch is rolled back and its writes are retried one
transaction each.

Shared budget holds: several processes of one host may open one file; the store is
then their :class:`~scheduler.store._ledger.BudgetLedger` (``try_reserve``, ``settle``,
``release``, ``renew``; see ``_sqlite_holds``): a call's estimate is held in the file,
checked against every process's usage and holds in one ``BEGIN IMMEDIATE``
transaction; concurrent holds share one, as writes do.  While the file stays locked
past ``retry_s`` a new hold fails closed (``StoreUnavailableError``), never spooled.

Threads: statements run on the event loop's thread, on the store's one
connection.  A thread hop per statement costs more than the statement: a commit
into the WAL is tens of microseconds, a hop to a worker thread and back a
hundred or more.  The loop never waits for the database all the same:

* the connection never checkpoints (``wal_autocheckpoint=0``): checkpoints, and
  the fsyncs they take, run in a thread of their own on a connection of its own
  (``_sqlite_checkpoint``), so no commit on the loop waits for the disk;
* ``busy_timeout`` is 0, so a database locked by another connection answers
  "busy" at once; the batch is retried with ``anyio.sleep`` backoff for up to
  ``retry_s``, and writes still refused then are appended to a local fsync-ed
  spool (``<db>-spool.jsonl``, as the Redis store spools; the append runs off
  the loop) and replayed in order, idempotently, before the next write, at close
  or at the next open — no event is lost, and reads see spooled state records
  and usage at once;
* opening (WAL recovery of a large file) and closing (the last connection's
  final checkpoint) run off the loop.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import anyio

import scheduler.store._sqlite_holds as holds
from scheduler.core import (
    GroupCommit,
    StoreError,
    StoreUnavailableError,
    SystemWallClock,
    Totals,
    UsageEvent,
    get_logger,
    loop_time,
    off_loop,
    private_dir,
    private_mode,
)
from scheduler.store._base import OPEN_CALL, check_event, scopes_of
from scheduler.store._ledger import Hold, ScopeLimit, Settled
from scheduler.store._spool import Spool, SpooledEvent, SpooledState, with_spooled_events
from scheduler.store._sqlite_checkpoint import Checkpointer
from scheduler.store._sqlite_sql import (
    EVENT_COLUMNS,
    apply,
    busy,
    charge_open_call,
    create_schema,
    firsts,
    open_call_row,
    open_calls_of,
    row_to_event,
)
from scheduler.store._sqlite_totals import totals_of

_log = get_logger("vibe_engine.store.sqlite")
T = TypeVar("T")
Entry = SpooledEvent | SpooledState
#: One caller's write: its entries are committed in one transaction, all or none.
Write = tuple[Entry, ...]
#: What a write answers: its first entry's (``_sqlite_sql.apply``).
Answer = int | Settled | None
_REPLAY_BATCH = 256  # spooled writes replayed per transaction
#: ``json.dumps(value, sort_keys=True)`` without making an encoder per call (every model
#: call writes an open-call record).
_encode_sorted = json.JSONEncoder(sort_keys=True).encode


class SqliteStore:
    """WAL-mode SQLite :class:`~scheduler.store.Store` in ``path``.

    ``retry_s`` is how long a statement is retried while the database is locked
    before a write is spooled (or a read fails); ``spool_path`` defaults to
    ``<path>-spool.jsonl``.  Also a :class:`~scheduler.store._ledger.BudgetLedger`
    shared by every process on the file (see ``_sqlite_holds``): a hold lapses
    ``hold_ttl_s`` after its grant or renewal, read on ``now`` (epoch seconds, the
    system wall clock by default).
    """

    #: A call no shared scope limits is not held (``Reservations``): nothing to check.
    hold_unlimited = False

    def __init__(self, path: str | Path, *, retry_s: float = 2.0,
                 spool_path: str | Path | None = None, hold_ttl_s: float = 600.0,
                 now: Callable[[], float] | None = None) -> None:
        self.path = Path(path)
        self.retry_s = retry_s
        self.spool = Spool(Path(spool_path) if spool_path is not None
                           else self.path.with_name(self.path.name + "-spool.jsonl"))
        self._db: sqlite3.Connection | None = None
        self._draining = False  # one replay of the spool at a time
        #: Commits shared by concurrent writes (``batches``/``writes``: how much); a
        #: batch also takes the writes made in the loop turn its first write was made in.
        self.group: GroupCommit[Write, Answer] = GroupCommit(self._commit, gather=True)
        #: Concurrent ``try_reserve`` calls share a transaction too (checked in order).
        self.hold_group: GroupCommit[holds.HoldRequest, Hold] = GroupCommit(
            self._commit_holds, gather=True)
        self._holder = holds.Holder(socket.gethostname(), os.getpid(), hold_ttl_s,
                              now or SystemWallClock().timestamp)
        #: The WAL's checkpoints, off the loop (``runs``: how many so far).
        self.checkpoints = Checkpointer(self.path)

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
            private_mode(self.path)  # before SQLite creates it with the umask's mode
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's thread does it
            self._db = db
            await create_schema(db, max(self.retry_s, 1.0))
            db.execute("PRAGMA busy_timeout=0")  # never wait for a lock: we retry, async
            # SQLite gives new -wal/-shm files the db's mode; older ones kept theirs (by
            # chmod: see private_mode, never by opening them)
            for extra in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + extra)
                if side.exists():
                    private_mode(side)
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
                await self.group.wait_idle()  # never close under a batch gathering or retrying
                await self.hold_group.wait_idle()
                await self._drain(wait=True)
            self.spool.warn_left("sqlite_spool_pending")  # replayed at the next open
        finally:
            db, self._db = self._db, None
            # the last connection's close checkpoints the WAL (fsyncs): off the loop
            with anyio.CancelScope(shield=True):
                await off_loop(self._close_connections, db)

    def _close_connections(self, db: sqlite3.Connection) -> None:
        self.checkpoints.stop()
        db.close()

    # -- running statements ------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # on the loop's thread: a statement never waits for a lock (busy_timeout=0) nor
        # for the disk (no checkpoint on this connection), see the module docstring
        return fn(self._conn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, wait: bool = True) -> T:
        """Run ``fn`` on the connection, retrying with backoff while the database is
        locked (for ``retry_s``; once without ``wait``)."""
        deadline = loop_time() + (self.retry_s if wait else 0.0)
        delay = 0.001  # a checkpoint holds the lock for milliseconds
        while True:
            try:
                return await self._call(fn)
            except sqlite3.OperationalError as exc:
                if not busy(exc) or loop_time() + delay > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)  # a lock held for a checkpoint ends in ms

    async def _commit(self, writes: list[Write]) -> list[Answer | Exception]:
        """Commit one batch of writes, in order after any spooled ones; spool the batch
        while the database stays locked.  One outcome per write: its first entry's."""
        entries = list(chain.from_iterable(writes))
        if len(self.spool):
            await self._drain(wait=False)
        if not len(self.spool):
            try:
                done = await self._run(functools.partial(apply, entries=entries))
            except sqlite3.OperationalError as exc:
                if not busy(exc):
                    return await self._one_by_one(writes, exc)
            except Exception as exc:  # a refused write (constraint, bad value …)
                return await self._one_by_one(writes, exc)
            else:
                self.checkpoints.committed()
                return firsts(writes, done)
        await off_loop(self.spool.extend, entries)  # fsync-ed: off the loop
        _log.warning("sqlite_write_spooled", path=str(self.path), writes=len(entries),
                     pending=len(self.spool))
        return [True if isinstance(w[0], SpooledEvent) else None for w in writes]

    async def _one_by_one(self, writes: list[Write],
                          exc: Exception) -> list[Answer | Exception]:
        """A batch failed (not on a lock): commit its writes one transaction each, so
        only the write at fault fails, and only its own caller."""
        if len(writes) == 1:
            if isinstance(exc, sqlite3.Error):
                return [StoreError(f"SQLite store {self.path}: {exc}")]
            return [exc]
        out: list[Answer | Exception] = []
        for write in writes:
            out.extend(await self._commit([write]))
        return out

    async def _drain(self, *, wait: bool) -> None:
        """Replay spooled writes in order until the spool is empty or the database is busy."""
        if not len(self.spool) or self._draining:
            return
        self._draining = True
        try:
            with self.spool.replaying() as mine:  # else another process on the file does
                if mine:
                    await self._replay(wait=wait)
        finally:
            self._draining = False

    async def _replay(self, *, wait: bool) -> None:
        done = 0
        try:
            entries = self.spool.read()
            for i in range(0, len(entries), _REPLAY_BATCH):
                chunk = entries[i:i + _REPLAY_BATCH]
                await self._run(functools.partial(apply, entries=chunk), wait=wait)
                done += len(chunk)
        except sqlite3.OperationalError as exc:
            if not busy(exc):
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        finally:
            if done:
                self._dropped(done)

    def _dropped(self, done: int) -> None:
        """Forget the ``done`` spooled writes replayed; kept if the spool cannot be
        rewritten (a full disk): replayed again later, idempotently, and no write fails."""
        if not self.spool.drop_replayed(done):
            return
        _log.info("sqlite_spool_replayed", path=str(self.path), writes=done,
                  pending=len(self.spool))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self.spool.pending():  # another process's spooled writes too
            await self._drain(wait=False)
        try:
            return await self._run(fn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    # -- usage -------------------------------------------------------------------------

    async def record(self, event: UsageEvent) -> bool:
        check_event(event)
        return bool(await self.group.submit((SpooledEvent(event),)))

    def record_and_delete_state(self, event: UsageEvent, kind: str,
                                key: str) -> Awaitable[int]:
        """:meth:`record` and :meth:`delete_state` in one transaction: both or neither
        (see ``store.record_and_delete_state``).  The group commit's write itself (every
        charge makes one: no coroutine more), whose outcome is its event's (``apply``)."""
        check_event(event)
        # (no typing.cast: a Python call per charge) an event write answers an int
        write: Awaitable[int] = self.group.submit(  # type: ignore[assignment]
            (SpooledEvent(event), SpooledState(kind, key, None)))
        return write

    async def charge_open_call(self, estimate: UsageEvent, key: str,
                               mark: dict[str, Any]) -> bool:
        """See ``store.charge_open_call``: one transaction, never spooled."""
        check_event(estimate)
        if self.spool.pending():
            await self._drain(wait=True)  # spooled writes first: a settle among them
            if len(self.spool):
                raise StoreError(f"SQLite store {self.path} is locked; {key} not charged")
        added = await self._read(functools.partial(charge_open_call, estimate=estimate,
                                                   key=key, mark=mark))
        self.checkpoints.committed()
        return added

    async def totals(self, scope: str) -> Totals:
        totals = await self._read(lambda db: totals_of(db, scope))
        for entry in self.spool.read() if len(self.spool) else ():
            if isinstance(entry, SpooledEvent) and scope in scopes_of(entry.event):
                totals.add(entry.event)  # recorded once the database answers again
        return totals

    async def events(self, *, task_id: str | None = None, day_from: str | None = None,
                     day_to: str | None = None) -> list[UsageEvent]:
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
        sql = f"SELECT {EVENT_COLUMNS} FROM events{where} ORDER BY at, rowid"
        rows = await self._read(lambda db: db.execute(sql, args).fetchall())
        # what waits in the spool (the file was locked) counts, as in the totals
        return with_spooled_events([row_to_event(r) for r in rows], self.spool.read() if len(
            self.spool) else (), task_id, day_from, day_to)

    # -- state -------------------------------------------------------------------------

    def put_state(self, kind: str, key: str, value: dict[str, Any]) -> Coroutine[Any, Any, Any]:
        """The group commit's write itself (no coroutine of this method: every model call
        writes its open-call record here)."""
        # an open call's record is a row of its own table (see ``OPEN_CALL``); any other
        # is encoded here: a value JSON cannot hold fails its caller only (once is enough)
        row = open_call_row(key, value) if kind == OPEN_CALL else None
        if row is not None:
            return self.group.submit((SpooledState(kind, key, value, row=row),))
        return self.group.submit((SpooledState(kind, key, value, _encode_sorted(value)),))

    async def put_states(self, kind: str, records: Sequence[tuple[str, dict[str, Any]]]
                         ) -> None:
        """:meth:`put_state` of each record, in one write of the group commit (one
        transaction: all or none): a burst of records -- a run's tasks at its start, the
        events of tasks ending together -- without a waiting caller per record.  A value
        JSON cannot hold fails alone, raised once the others are written."""
        entries: list[Entry] = []
        error: Exception | None = None
        for key, value in records:
            try:
                entries.append(SpooledState(kind, key, value, json.dumps(value, sort_keys=True)))
            except (TypeError, ValueError) as exc:
                error = error or exc
        if entries:
            await self.group.submit(tuple(entries))
        if error is not None:
            raise error

    async def put_state_if_absent(self, kind: str, key: str, value: dict[str, Any]) -> bool:
        """Write the record unless ``kind``/``key`` has one: ``True`` when written.  One
        ``INSERT OR IGNORE`` (a transaction of its own), so of several processes on the
        file exactly one writes it.  Never spooled (see ``store.put_state_if_absent``):
        raises :class:`StoreError` while the database stays locked."""
        text = _encode_sorted(value)
        if self.spool.pending():
            await self._drain(wait=True)  # spooled writes first, in order
            if len(self.spool):
                raise StoreError(f"SQLite store {self.path} is locked; cannot claim {key}")
        added = await self._read(lambda db: db.execute(
            "INSERT OR IGNORE INTO state VALUES (?,?,?)", (kind, key, text)).rowcount == 1)
        if added:
            self.checkpoints.committed()
        return added

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None:
        spooled = self._spooled_state(kind)
        if key in spooled:
            value: dict[str, Any] | None = spooled[key]
            return value
        if kind == OPEN_CALL:
            found = await self._read(lambda db: open_calls_of(db, key))
            if key in found:
                return found[key]
        row = await self._read(lambda db: db.execute(
            "SELECT value FROM state WHERE kind = ? AND key = ?", (kind, key)).fetchone())
        return json.loads(row[0]) if row else None

    async def list_state(self, kind: str) -> dict[str, dict[str, Any]]:
        rows = await self._read(lambda db: db.execute(
            "SELECT key, value FROM state WHERE kind = ? ORDER BY key", (kind,)).fetchall())
        out = {k: json.loads(v) for k, v in rows}
        if kind == OPEN_CALL:
            out.update(await self._read(open_calls_of))
        for key, value in self._spooled_state(kind).items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return dict(sorted(out.items()))

    async def delete_state(self, kind: str, key: str) -> None:
        await self.group.submit((SpooledState(kind, key, None),))

    def _spooled_state(self, kind: str) -> dict[str, Any]:
        """State writes still in the spool, last write per key (None: deleted)."""
        if not len(self.spool):
            return {}
        return {e.key: e.value for e in self.spool.read()
                if isinstance(e, SpooledState) and e.kind == kind}

    # -- BudgetLedger (every process on the file; see ``_sqlite_holds``) ----------------

    def try_reserve(
        self, hold_id: str, limits: tuple[ScopeLimit, ...], *, model: str, tokens: int,
        cost_usd: float,
    ) -> Coroutine[Any, Any, Hold]:
        """Hold the amounts in every scope of ``limits`` or raise ``BudgetExceededError``;
        ``StoreUnavailableError`` while the file stays locked (fail-closed).  The group
        commit's own coroutine, no frame more: every waiting call has one at its start."""
        if not holds.limited(limits):  # no limit to check: nothing to hold, nor a write
            return holds.unheld(Hold(hold_id, (), model, tokens, cost_usd, {}, {}))
        return self.hold_group.submit(holds.HoldRequest(hold_id, limits, model, tokens,
                                                        cost_usd))

    async def _commit_holds(self, requests: list[holds.HoldRequest]) -> list[Hold | Exception]:
        if self.spool.pending():  # spooled usage first (any process's): checks see it
            await self._drain(wait=True)
        if len(self.spool):
            raise StoreUnavailableError(f"SQLite store {self.path} is locked; no new holds")
        try:
            out = await self._run(functools.partial(holds.reserve_all, requests=requests,
                                                    holder=self._holder))
        except sqlite3.OperationalError as exc:
            if busy(exc):
                raise StoreUnavailableError(
                    f"SQLite store {self.path} is locked; no new holds: {exc}") from exc
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        self.checkpoints.committed()
        return out

    async def settle(self, event: UsageEvent, hold: Hold) -> bool:
        """Record ``event`` and end ``hold`` in one transaction (spooled with it while
        the file is locked); ``False`` for a repeated event, whose hold ends all the same."""
        check_event(event)
        return bool(await self.group.submit((SpooledEvent(event, holds.held_id(hold)),)))

    async def settle_and_delete_state(self, event: UsageEvent, hold: Hold, kind: str,
                                      key: str) -> int | Settled:
        """:meth:`settle` and :meth:`delete_state` in one transaction: all or none (see
        ``store.record_and_delete_state``).  Recorded, the outcome comes with every
        process's totals of the hold's scopes as the commit left them (``Settled``)."""
        check_event(event)
        return await self.group.submit(
            (SpooledEvent(event, holds.held_id(hold), hold.scopes),
             SpooledState(kind, key, None))) or 0

    async def renew(self, hold: Hold) -> bool:
        """Push ``hold``'s expiry out by ``hold_ttl_s``; ``False`` once it had lapsed (or
        the file stays locked: it then lapses on its own unless renewed later)."""
        if not hold.scopes:
            return True
        try:
            alive = await self._run(functools.partial(holds.renew, hold_id=hold.hold_id,
                                                      holder=self._holder))
        except sqlite3.Error as exc:
            _log.warning("sqlite_hold_not_renewed", path=str(self.path), error=str(exc))
            return False
        self.checkpoints.committed()
        return alive

    async def release(self, hold: Hold) -> None:
        if not hold.scopes:
            return
        try:
            await self._run(functools.partial(holds.release, hold_id=hold.hold_id))
        except sqlite3.Error as exc:  # it lapses on its own after hold_ttl_s
            _log.warning("sqlite_hold_not_released", path=str(self.path), error=str(exc))
            return
        self.checkpoints.committed()
