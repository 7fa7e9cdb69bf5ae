"""R1.5/R2.6: a spool file shared by several processes (every process on one SQLite file
spools to ``<db>-spool.jsonl``; Redis stores run from one directory share theirs) loses
nothing and stops none of them once replayed."""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from scheduler import Usage, UsageEvent
from scheduler.store import SqliteStore
from scheduler.store._ledger import ScopeLimit
from scheduler.store._spool import Spool, SpooledEvent
from scheduler.testing import FRIDAY, run_virtual
from tests._store_cases import disk_full_once

DAY = f"day:{FRIDAY.isoformat()}"


def _event(n: int, tokens: int = 10) -> UsageEvent:
    return UsageEvent(event_id=f"e{n}", task_id="t", session_id="s", day=FRIDAY.isoformat(),
                      at=float(n), model="sonnet", usage=Usage(prompt_tokens=tokens))


def _ids(spool: Spool) -> list[str]:
    return [e.event.event_id for e in spool.read() if isinstance(e, SpooledEvent)]


def test_r1_5_an_append_from_another_process_during_a_replays_drop_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R1.5: a write another process spools (fsync-ed: acknowledged) while this one drops
    the entries it replayed -- between its re-read of the file and the file's replace --
    stays in the spool, behind what is left."""
    path = tmp_path / "spool.jsonl"
    mine, other = Spool(path), Spool(path)
    mine.extend([SpooledEvent(_event(1)), SpooledEvent(_event(2))])
    real_replace = os.replace
    appender: list[threading.Thread] = []

    def replace_racing(src: str, dst: str) -> None:
        # the other process appends now; a writer that waits for the drop is let finish
        # its append once the drop is over
        t = threading.Thread(target=other.append, args=(SpooledEvent(_event(3)),))
        t.start()
        t.join(0.5)
        appender.append(t)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_racing)
    mine.drop_first(1)
    monkeypatch.setattr(os, "replace", real_replace)
    appender[0].join(10)
    assert not appender[0].is_alive()
    assert _ids(Spool(path)) == ["e2", "e3"]


def test_r1_5_a_spool_replayed_by_another_process_does_not_refuse_holds_for_ever(
        tmp_path: Path) -> None:
    """R1.5 fail-closed only while the file is locked: two processes spool while a third
    connection locks the file; once it is free, one replays the whole spool (both
    processes' writes).  The other then grants holds again (it used to count its own
    spooled writes for ever, so refused every new hold as if the file were locked), and
    every spooled event is counted once."""
    db = tmp_path / "v.db"

    async def main() -> list[object]:
        a, b = SqliteStore(db, retry_s=0.05), SqliteStore(db, retry_s=0.05)
        await a.open()
        await b.open()
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        assert await a.record(_event(1)) and await b.record(_event(2))
        lock.execute("ROLLBACK")
        lock.close()
        await a.record(_event(3))  # replays the spool first: e1 and e2
        hold = await b.try_reserve("h", (ScopeLimit(DAY, tokens=1_000),), model="sonnet",
                                   tokens=100, cost_usd=0.0)
        totals = (await b.totals(DAY)).prompt_tokens
        await a.aclose()
        await b.aclose()
        return [hold.hold_id, totals, len(Spool(a.spool.path))]

    assert run_virtual(main) == ["h", 30, 0]


def test_r1_5_a_store_sees_usage_another_process_spooled(tmp_path: Path) -> None:
    """R1.5: usage another process on the file spooled (the file locked for it) counts in
    this one's totals at once, and is replayed by whichever process gets to it first."""
    db = tmp_path / "v.db"

    async def main() -> list[int]:
        a, b = SqliteStore(db, retry_s=0.05), SqliteStore(db, retry_s=0.05)
        await a.open()
        await b.open()
        seen = [(await a.totals(DAY)).prompt_tokens]
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        assert await b.record(_event(1, 40))
        lock.execute("ROLLBACK")
        lock.close()
        seen.append((await a.totals(DAY)).prompt_tokens)
        await a.aclose()
        await b.aclose()
        return seen

    assert run_virtual(main) == [0, 40]


def test_r1_5_a_spool_that_cannot_be_rewritten_fails_no_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R1.5: once spooled writes are replayed, a failure to rewrite the spool (a disk
    full, a state directory gone read-only) fails no caller's write: the entries stay in
    the spool, replayed again (idempotently) later, and every event counts once."""
    db = tmp_path / "v.db"

    async def main() -> list[object]:
        store = SqliteStore(db, retry_s=0.05)
        await store.open()
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        assert await store.record(_event(1))
        lock.execute("ROLLBACK")
        lock.close()
        disk_full_once(monkeypatch)
        added = await store.record(_event(2))  # replays e1, whose spool stays
        added3 = await store.record(_event(3))  # replays e1 again, then drops it
        totals = (await store.totals(DAY)).prompt_tokens
        await store.aclose()
        return [added, added3, totals, len(Spool(store.spool.path))]

    assert run_virtual(main) == [True, True, 30, 0]


def test_r1_5_two_processes_replaying_one_spool_lose_nothing(tmp_path: Path) -> None:
    """R1.5: two processes on one file both start replaying the shared spool while the
    file is still locked; a write spooled meanwhile is not dropped by the second replay
    (each used to drop as many entries as it had read), and every event counts once."""
    db = tmp_path / "v.db"

    async def main() -> list[object]:
        a, b = SqliteStore(db, retry_s=5.0), SqliteStore(db, retry_s=0.05)
        await b.open()
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        assert await b.record(_event(1)) and await b.record(_event(2))
        b.retry_s = 5.0
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.open)  # replays the spool it finds at its open
            tg.start_soon(functools.partial(b._drain, wait=True))
            await anyio.sleep(0.5)  # both wait for the lock now
            b.spool.append(SpooledEvent(_event(3)))  # spooled while they replay
            await anyio.sleep(0.5)
            lock.execute("ROLLBACK")
            lock.close()
        await a.aclose()  # replays what is left
        await b.aclose()
        return [_event_ids(db), len(Spool(a.spool.path))]

    assert run_virtual(main) == [["e1", "e2", "e3"], 0]


def _event_ids(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT event_id FROM events ORDER BY event_id")]
    finally:
        con.close()
