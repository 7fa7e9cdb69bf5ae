"""R2.6 on SQLite: the usage log holds the events still in the spool (written while the
database file was locked by another process), as the totals and state reads already do:
``report`` and ``status`` read meanwhile count every paid call once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio

from scheduler.store import SqliteStore
from tests._store_cases import ev

BIN = Path(sys.executable).parent / "vibe-engine"


def test_r2_6_report_counts_the_calls_spooled_while_the_database_was_locked(
    tmp_path: Path,
) -> None:
    """e1 is recorded; then another connection holds the file's write lock and e2 (t1),
    e3 (t2) are spooled.  ``vibe-engine report`` counted 1 call and 162 tokens (the
    database only), while ``totals`` counted 3; it counts the 3 calls, each once (and
    once more after the spool is replayed)."""
    state = tmp_path / "st"
    db = state / "vibe.db"

    async def spool_two(lock: sqlite3.Connection) -> list[str]:
        store = SqliteStore(db, retry_s=0.05)
        await store.open()
        await store.record(ev(1))
        lock.execute("BEGIN IMMEDIATE")
        assert await store.record(ev(2)) and await store.record(ev(3, task="t2"))
        assert len(store.spool) == 2
        return [e.event_id for e in await store.events(task_id="t1")]

    state.mkdir()
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        assert anyio.run(spool_two, lock) == ["e1", "e2"]
        out = subprocess.run([str(BIN), "report", "--json", "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=60, check=False)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["total"]["calls"], doc["total"]["tokens"]) == (3, 3 * 162)
    assert sorted((t["task_id"], t["calls"]) for t in doc["tasks"]) == [("t1", 2), ("t2", 1)]

    async def replayed() -> list[str]:
        store = SqliteStore(db)
        await store.open()
        try:
            return [e.event_id for e in await store.events()]
        finally:
            await store.aclose()

    assert anyio.run(replayed) == ["e1", "e2", "e3"]
