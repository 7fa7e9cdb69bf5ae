"""Charge throughput of the tracker on both stores, and token-estimation cost.

``python -m benchmarks.tracker --json [--quick]``

* ``memory_events_per_s`` / ``sqlite_events_per_s``: ``Tracker.charge`` (admission
  bookkeeping, nested scopes, threshold checks and the store write) per second;
* ``raw_sqlite_inserts_per_s``: the baseline — plain ``sqlite3`` inserting one
  row per committed transaction with the same WAL pragmas, in the same run;
* ``estimate_us_per_call``: estimating every call of a 20-turn conversation with
  a 4 KiB system prompt and 10 tool definitions, with the content cache
  (``cached``) and without (``uncached``).
"""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import date
from pathlib import Path
from timeit import default_timer

import anyio

from benchmarks._common import emit, median_of, parse_args, progress
from scheduler import Limits, TaskSpec, Usage, VibeConfig
from scheduler.budget import TokenCounter, Tracker
from scheduler.budget import resolve_task as resolve_task
from scheduler.core import FixedWallClock
from scheduler.store import MemoryStore, SqliteStore, Store

CONFIG = VibeConfig(
    budgets={"session": Limits(), "day": Limits()},
)
SPEC = TaskSpec(id="bench", agent="coder", prompt="x", budget=Limits(tokens=10**12, cost_usd=1e9))


async def _charge_rate(store: Store, n: int) -> float:
    await store.open()
    tr = Tracker(store, CONFIG, session_id="bench", wall=FixedWallClock(date(2026, 11, 27)))
    await tr.open()
    await tr.start_task("bench", resolve_task(SPEC, CONFIG), agent="coder")
    usage = Usage(100, 50, 0, 0, 0)
    events = [tr.make_event("bench", model="sonnet", usage=usage, cost_usd=0.001)
              for _ in range(n)]
    start = default_timer()
    for ev in events:
        await tr.charge(ev)
    elapsed = default_timer() - start
    await store.aclose()
    return n / elapsed


def _raw_sqlite_rate(path: Path, n: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS e (id TEXT PRIMARY KEY, tokens INTEGER, cost REAL)")
    rows = [(f"r{i}-{default_timer()}", 150, 0.001) for i in range(n)]
    start = default_timer()
    for row in rows:
        db.execute("BEGIN")
        db.execute("INSERT INTO e VALUES (?,?,?)", row)
        db.execute("COMMIT")
    elapsed = default_timer() - start
    db.close()
    return n / elapsed


def _conversation() -> tuple[str, list[dict[str, object]], list[list[dict[str, str]]]]:
    system = ("You are a meticulous engineer. Follow the repository conventions. " * 64)[:4096]
    tools: list[dict[str, object]] = [
        {"name": f"tool_{i}", "description": f"Tool number {i} reads and edits files. " * 4,
         "input_schema": {"type": "object",
                          "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
                          "required": ["path"]}}
        for i in range(10)
    ]
    turns: list[list[dict[str, str]]] = []
    messages: list[dict[str, str]] = []
    for i in range(20):
        role = "user" if i % 2 == 0 else "assistant"
        messages = [*messages, {"role": role, "content": f"Turn {i}: " + "details " * 60}]
        turns.append(messages)
    return system, tools, turns


def _estimate_us(cached: bool) -> float:
    system, tools, turns = _conversation()
    tc = TokenCounter(use_cache=cached)
    start = default_timer()
    for msgs in turns:
        tc.estimate("sonnet", msgs, system=system, tools=tools)
    return (default_timer() - start) / len(turns) * 1e6


def main() -> None:
    args = parse_args(__doc__ or "")
    n = 2_000 if args.quick else 20_000
    repeat = args.repeat or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        counter = iter(range(10**6))
        progress(f"tracker: {n} charges x {repeat} repetitions per store")
        mem = median_of(lambda: anyio.run(_charge_rate, MemoryStore(), n), repeat)
        sql = median_of(
            lambda: anyio.run(_charge_rate, SqliteStore(root / f"b{next(counter)}.db"), n), repeat
        )
        raw = median_of(lambda: _raw_sqlite_rate(root / f"raw{next(counter)}.db", n), repeat)
    est_cached = median_of(lambda: _estimate_us(True), repeat)
    est_uncached = median_of(lambda: _estimate_us(False), repeat)
    results = {
        "memory_events_per_s": round(mem),
        "sqlite_events_per_s": round(sql),
        "raw_sqlite_inserts_per_s": round(raw),
        "sqlite_ratio_to_raw": round(sql / raw, 3),
        "estimate_us_per_call": {"cached": round(est_cached, 1),
                                 "uncached": round(est_uncached, 1)},
    }
    emit("tracker", {"events": n, "repeat": repeat, "conversation_turns": 20,
                     "system_prompt_bytes": 4096, "tools": 10},
         results, ("anyio", "tiktoken", "pydantic"), args.json)


if __name__ == "__main__":
    main()
