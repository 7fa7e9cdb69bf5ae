"""R2.6 (#22): the open-call records of one commit are written by one statement run for
them all; writes and closes of a key in one batch still land in the order they were made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.store import SqliteStore
from scheduler.store._base import OPEN_CALL
from scheduler.store._spool import Entry, SpooledState
from scheduler.store._sqlite_sql import apply, open_call_row


def _record(key: str, pid: int = 1) -> dict[str, Any]:
    return {"event_id": key, "task_id": "t", "session_id": "s", "day": "2026-01-01",
            "agent": "a", "task_type": "x", "model": "m", "prompt_tokens": 1,
            "output_tokens": 2, "cost_usd": 0.5, "host": "h", "pid": pid, "run": "r",
            "day_scope": ""}


def _put(key: str, pid: int = 1) -> SpooledState:
    value = _record(key, pid)
    return SpooledState(OPEN_CALL, key, value, row=open_call_row(key, value))


def _close(key: str) -> SpooledState:
    return SpooledState(OPEN_CALL, key, None)


async def test_r2_6_open_calls_of_one_commit_land_in_order(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.put_state(OPEN_CALL, "c", _record("c"))
        entries: list[Entry] = [
            _put("a"), _close("a"),  # written, then closed: gone
            _close("b"), _put("b"),  # closed (nothing there), then written: there
            _close("c"), _put("c", 2), _close("c"), _put("c", 3),  # the last write wins
            _put("d"), SpooledState(OPEN_CALL, "d", {"odd": 1}), _put("d", 4),  # a row again
            _put("e", 1), _put("e", 5),  # twice: the last one
        ]
        assert apply(store._conn, entries) == [None] * len(entries)
        found = await store.list_state(OPEN_CALL)
        assert {k: v["pid"] for k, v in found.items()} == {"b": 1, "c": 3, "d": 4, "e": 5}
        assert found["d"] == _record("d", 4)  # its row is read over its JSON record
    finally:
        await store.aclose()
