"""The SQLite ledger commits on the event loop and checkpoints in a thread (#22; R2.1
recording usage, R2.6 persistence, R1.5 calls in flight).

Commits run on the loop's thread without an automatic checkpoint; the WAL is copied
back and started over by a thread of its own.  What this must not change: an
acknowledged charge survives SIGKILL, totals equal the events recorded, and a settled
call's event and the deletion of its ``open_call`` record are one write (a killed
process leaves either both undone or both done).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from scheduler import Usage, UsageEvent
from scheduler.budget._open_calls import OpenCall
from scheduler.store import SqliteStore
from scheduler.store._sqlite_checkpoint import Checkpointer
from scheduler.testing import run_real

pytestmark = pytest.mark.anyio
DAY = "2026-11-27"


def _event(n: int, task: str = "t") -> UsageEvent:
    return UsageEvent(event_id=f"e{n}", task_id=task, session_id="s", day=DAY, at=float(n),
                      model="sonnet", usage=Usage(100, 10), cost_usd=0.001)


def _wait_until(done: Callable[[], bool]) -> None:
    pause = threading.Event()
    for _ in range(1000):  # 10 s at most
        if done():
            return
        pause.wait(0.01)
    raise AssertionError("the checkpointer did not run")


def _wal_frames(db: Path) -> int:
    """Frames in the WAL now (a passive checkpoint from another connection reports them)."""
    other = sqlite3.connect(db)
    try:
        frames: int = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        return frames
    finally:
        other.close()


@pytest.mark.real_asyncio  # the checkpointer's thread and a real SQLite file
async def test_r2_6_checkpoints_run_off_the_loop_and_the_wal_starts_over(tmp_path: Path) -> None:
    """#22, R2.6: the store's own connection never checkpoints; checkpoints run in another
    thread while 40 writers charge, and the WAL is started over instead of growing with
    every commit; every charge is recorded once and counted in the totals."""
    db = tmp_path / "vibe.db"
    store = SqliteStore(db)
    store.checkpoints = Checkpointer(db, every=8, restart_frames=64)
    await store.open()
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    n = 0

    async def writer(k: int, phase: int) -> None:
        nonlocal n
        for i in range(phase * 10, phase * 10 + 10):
            assert await store.record(_event(k * 1000 + i, f"t{k % 7}"))
            n += 1

    # four phases of 40 concurrent writers: each phase's 400 charges take at least 10
    # group commits (a batch holds one write per writer), so each asks for a checkpoint;
    # requests made before the thread wakes are one run, so each phase waits for its own
    for phase in range(4):
        before = store.checkpoints.runs
        async with anyio.create_task_group() as tg:
            for k in range(40):
                tg.start_soon(writer, k, phase)
        # waited for in a thread: the checkpointer is one
        await anyio.to_thread.run_sync(_wait_until, lambda b=before: store.checkpoints.runs > b)
    assert store.checkpoints.runs >= 3
    assert threading.get_ident() not in store.checkpoints.thread_ids
    assert store.group.batches >= 3 * store.checkpoints.every
    # ~7 pages a commit: without restarts the WAL would hold every commit's frames
    assert _wal_frames(db) < 7 * store.group.batches
    assert (await store.totals(f"day:{DAY}")).calls == n == 1600
    await store.aclose()
    assert not db.with_name("vibe.db-wal").exists()  # the close checkpointed it


WRITERS = textwrap.dedent(
    """
    import sys, anyio
    from scheduler import Usage, UsageEvent
    from scheduler.store import SqliteStore
    from scheduler.store._sqlite_checkpoint import Checkpointer

    async def writer(store, k):
        n = 0
        while True:
            n += 1
            key = f"w{k}-{n}"
            await store.put_state("open_call", key, {"task_id": f"t{k}", "tokens": 110})
            print("open", key, flush=True)
            ev = UsageEvent(event_id=key, task_id=f"t{k}", session_id="killed",
                            day="2026-11-27", at=float(n), model="sonnet",
                            usage=Usage(100, 10), cost_usd=0.001)
            await store.record_and_delete_state(ev, "open_call", key)
            print("settled", key, flush=True)

    async def main(path):
        store = SqliteStore(path)
        store.checkpoints = Checkpointer(store.path, every=4, restart_frames=32)
        await store.open()
        async with anyio.create_task_group() as tg:
            for k in range(10):
                tg.start_soon(writer, store, k)

    anyio.run(main, sys.argv[1])
    """
)


def test_r1_5_sigkill_while_checkpointing_keeps_every_acknowledged_call(tmp_path: Path) -> None:
    """#22, R1.5/R2.6: 10 writers open calls and settle them (event + record deletion in
    one write) while checkpoints run every few commits; after SIGKILL every settled call's
    event is there and its ``open_call`` record gone, every call opened and not settled
    still has its record or its event, never both, and the totals equal the events."""
    db = tmp_path / "vibe.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITERS, str(db)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stdout is not None
    opened: set[str] = set()
    settled: set[str] = set()
    for line in proc.stdout:
        what, key = line.split()
        (settled if what == "settled" else opened).add(key)
        if len(settled) >= 800:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    run_real(_check_after_kill, db, opened, settled)


async def _check_after_kill(db: Path, opened: set[str], settled: set[str]) -> None:
    store = SqliteStore(db)
    await store.open()
    events = {e.event_id for e in await store.events()}
    records = set(await store.list_state("open_call"))
    assert settled <= events
    assert not (settled & records)
    assert not (events & records)  # the event and the deletion: both or neither
    assert opened <= events | records  # an acknowledged open is never lost
    assert (await store.totals(f"day:{DAY}")).tokens == 110 * len(events)
    await store.aclose()


def _open_record(key: str) -> dict[str, Any]:
    """An open call's record as ``OpenCalls`` writes it (every field of ``OpenCall``)."""
    return {"event_id": key, "task_id": "t", "session_id": "s", "day": DAY, "agent": "a",
            "task_type": "bug_fix", "model": "sonnet", "day_scope": "", "prompt_tokens": 100,
            "output_tokens": 10, "cost_usd": 0.001, "host": "h", "pid": 1, "run": "r"}


@pytest.mark.real_asyncio  # a real SQLite file, read beside the store
async def test_r1_5_open_call_records_are_rows_of_their_own_table(tmp_path: Path) -> None:
    """#22, R1.5: every model call writes an ``open_call`` record before it goes out and
    deletes it with its event, so SQLite keeps such a record as a row of ``open_calls``
    (bound values, no JSON), read back as it was written; a record of another shape, or
    one an earlier version wrote as JSON, is still listed, read and deleted."""
    assert set(_open_record("k")) == set(OpenCall.__dataclass_fields__)
    db = tmp_path / "vibe.db"
    store = SqliteStore(db)
    await store.open()
    await store.put_state("open_call", "e1", _open_record("e1"))
    await store.put_state("open_call", "odd", {"task_id": "t", "tokens": 5})
    raw = sqlite3.connect(db)
    try:
        rows = raw.execute("SELECT key, task_id, prompt_tokens, cost_usd FROM open_calls")
        assert rows.fetchall() == [("e1", "t", 100, 0.001)]
        json_keys = raw.execute("SELECT key FROM state WHERE kind = 'open_call'").fetchall()
        assert json_keys == [("odd",)]
        raw.execute("INSERT INTO state VALUES ('open_call', 'old', ?)",
                    (json.dumps(_open_record("old")),))
        raw.commit()
        assert await store.get_state("open_call", "e1") == _open_record("e1")
        assert await store.get_state("open_call", "old") == _open_record("old")
        assert await store.list_state("open_call") == {
            "e1": _open_record("e1"), "odd": {"task_id": "t", "tokens": 5},
            "old": _open_record("old")}
        event = UsageEvent(event_id="e1", task_id="t", session_id="s", day=DAY, at=1.0,
                           model="sonnet", usage=Usage(100, 10), cost_usd=0.001)
        assert await store.record_and_delete_state(event, "open_call", "e1")
        for key in ("odd", "old"):
            await store.delete_state("open_call", key)
        assert await store.list_state("open_call") == {}
        assert raw.execute("SELECT count(*) FROM open_calls").fetchone() == (0,)
        assert raw.execute("SELECT count(*) FROM state").fetchone() == (0,)
    finally:
        raw.close()
        await store.aclose()


_DMS_PROBE = textwrap.dedent("""
    import fcntl, os, struct, sys
    # F_GETLK on the byte of the -shm file that SQLite's unix VFS read-locks while a
    # connection of a process has the database open (its "DMS" lock, byte 128): another
    # process that finds it free takes the database for closed and rebuilds the -shm
    # file under the open connection's mapping.
    fd = os.open(sys.argv[1], os.O_RDWR)
    want = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 128, 1, 0)
    got = fcntl.fcntl(fd, fcntl.F_GETLK, want)
    print("held" if struct.unpack("hhqqi4x", got)[0] != fcntl.F_UNLCK else "free")
""")


async def test_r2_6_an_open_store_keeps_sqlite_locks_on_its_shared_memory(
        tmp_path: Path) -> None:
    """R2.6: while a store is open its connection keeps SQLite's read lock on the WAL
    index (``vibe.db-shm``), so another process opening the file -- ``vibe-engine status``,
    a replica -- sees it in use.  Making the side files private by opening them closed a
    descriptor, and closing any descriptor of a file drops every POSIX lock this process
    holds on it: the next process rebuilt the index under the open connection (SIGBUS in
    the running orchestrator, or two processes on two indexes)."""
    db = tmp_path / "st" / "vibe.db"
    shm = str(db) + "-shm"
    for i in range(2):  # a new file, then one whose -wal/-shm are already there
        store = SqliteStore(db)
        await store.open()
        try:
            await store.record(_event(i))
            assert os.stat(shm).st_mode & 0o777 == 0o600
            probe = await anyio.run_process([sys.executable, "-c", _DMS_PROBE, shm])
            assert probe.stdout.decode().strip() == "held", probe.stdout + probe.stderr
        finally:
            await store.aclose()


async def test_r2_6_a_new_ledger_has_small_pages_and_an_older_file_keeps_its_own(
    tmp_path: Path,
) -> None:
    """#22, R2.6: a new file is made with 2 KiB pages (a commit writes each page it changed
    whole into the WAL); a file an earlier version made with 4 KiB pages opens as it is,
    keeps them, and records and totals charges as before."""
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE earlier (x)")  # a file with content: its page size is set
    db.close()
    for path, size in ((tmp_path / "new.db", 2048), (old, 4096)):
        store = SqliteStore(path)
        await store.open()
        assert await store.record(_event(1)) and await store.record(_event(2))
        assert not await store.record(_event(1))
        assert (await store.totals("task:t")).calls == 2
        await store.aclose()
        check = sqlite3.connect(path)
        assert check.execute("PRAGMA page_size").fetchone()[0] == size
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert check.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
        check.close()
