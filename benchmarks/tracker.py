"""Charge throughput of the tracker on both stores, and token-estimation cost.

``python -m benchmarks.tracker --json [--quick]``

* ``memory_events_per_s`` / ``sqlite_events_per_s``: ``Tracker.charge`` (admission
  bookkeeping, nested scopes, threshold checks and the store write) per second,
  with ``AGENTS`` tasks charging concurrently (each awaits its charge, as every
  agent of a run does; concurrent SQLite charges share commits);
* ``sqlite_sequential_events_per_s``: the same with one charger, so each charge is
  a commit of its own (latency-bound: a thread hop and a commit per event);
* ``sqlite_writes_per_commit``: how many charges a SQLite commit carried on average
  in the concurrent run;
* ``raw_sqlite_inserts_per_s``: the baseline — plain ``sqlite3`` on the loop's
  thread inserting one 3-column row per transaction (``BEGIN``, ``INSERT``,
  ``COMMIT``), WAL with ``synchronous=NORMAL`` as the store, in the same run;
  ``sqlite_ratio_to_raw`` is ``sqlite_events_per_s`` ÷ this;
* ``raw_sqlite_batch_inserts_per_s``: the same rows committed ``AGENTS`` per
  transaction — the floor no group commit can beat;
* ``estimate_us_per_call``: estimating every call of a 20-turn conversation with
  a 4 KiB system prompt and 10 tool definitions, with the content cache
  (``cached``) and without (``uncached``).
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
from datetime import date
from pathlib import Path
from timeit import default_timer

import anyio

from benchmarks._common import emit, median_of, parse_args, progress
from scheduler import Limits, TaskSpec, Usage, VibeConfig
from scheduler.budget import TokenCounter, Tracker
from scheduler.budget import resolve_task as resolve_task
from scheduler.core import FixedWallClock, UsageEvent
from scheduler.store import MemoryStore, SqliteStore, Store

AGENTS = 50  # concurrent chargers: the pool size of the measurements
CONFIG = VibeConfig(
    budgets={"session": Limits(), "day": Limits()},
)
SPEC = TaskSpec(id="bench", agent="coder", prompt="x", budget=Limits(tokens=10**12, cost_usd=1e9))


async def _charge_rate(store: Store, n: int, agents: int, stats: list[float]) -> float:
    """Charges per second: ``agents`` tasks each charging ``n // agents`` events in turn."""
    await store.open()
    tr = Tracker(store, CONFIG, session_id="bench", wall=FixedWallClock(date(2026, 11, 27)))
    await tr.open()
    usage = Usage(100, 50, 0, 0, 0)
    per_task = []
    for k in range(agents):
        await tr.start_task(f"bench{k}", resolve_task(SPEC, CONFIG), agent="coder")
        per_task.append([tr.make_event(f"bench{k}", model="sonnet", usage=usage,
                                       cost_usd=0.001) for _ in range(n // agents)])

    async def agent(events: list[UsageEvent]) -> None:
        for ev in events:
            await tr.charge(ev)

    start = default_timer()
    async with anyio.create_task_group() as tg:
        for events in per_task:
            tg.start_soon(agent, events)
    elapsed = default_timer() - start
    if isinstance(store, SqliteStore):
        stats.append(store.group.writes / max(store.group.batches, 1))
    await store.aclose()
    return agents * (n // agents) / elapsed


def _raw_sqlite_rate(path: Path, n: int, per_commit: int = 1) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS e (id TEXT PRIMARY KEY, tokens INTEGER, cost REAL)")
    rows = [(f"r{i}-{default_timer()}", 150, 0.001) for i in range(n)]
    start = default_timer()
    for i in range(0, n, per_commit):
        db.execute("BEGIN")
        for row in rows[i:i + per_commit]:
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


def _round(root: Path, n: int, tag: int) -> dict[str, float]:
    """One repetition of every charge figure, back to back, so the ratios compare runs
    made under the same load (the machines are shared)."""
    shared: list[float] = []
    # the baseline runs between the two figures compared with it
    out = {
        "sqlite": anyio.run(_charge_rate, SqliteStore(root / f"g{tag}.db"), n, AGENTS, shared),
        "raw": _raw_sqlite_rate(root / f"raw{tag}.db", n),
        "sequential": anyio.run(_charge_rate, SqliteStore(root / f"s{tag}.db"), n, 1, []),
        "memory": anyio.run(_charge_rate, MemoryStore(), n, AGENTS, []),
        "raw_batch": _raw_sqlite_rate(root / f"rawb{tag}.db", n, AGENTS),
    }
    out["per_commit"] = shared[0]
    return out


def main() -> None:
    args = parse_args(__doc__ or "")
    n = 2_000 if args.quick else 20_000
    repeat = args.repeat or (3 if args.quick else 5)
    progress(f"tracker: {n} charges x {repeat} repetitions per store, {AGENTS} agents")
    with tempfile.TemporaryDirectory() as tmp:
        rounds = [_round(Path(tmp), n, i) for i in range(repeat)]

    def med(key: str, over: str = "") -> float:
        return statistics.median(r[key] / (r[over] if over else 1) for r in rounds)

    est_cached = median_of(lambda: _estimate_us(True), repeat)
    est_uncached = median_of(lambda: _estimate_us(False), repeat)
    results = {
        "memory_events_per_s": round(med("memory")),
        "sqlite_events_per_s": round(med("sqlite")),
        "sqlite_sequential_events_per_s": round(med("sequential")),
        "sqlite_writes_per_commit": round(med("per_commit"), 1),
        "raw_sqlite_inserts_per_s": round(med("raw")),
        "raw_sqlite_batch_inserts_per_s": round(med("raw_batch")),
        # the median of each repetition's own ratio: both sides measured back to back
        "sqlite_ratio_to_raw": round(med("sqlite", "raw"), 3),
        "sqlite_sequential_ratio_to_raw": round(med("sequential", "raw"), 3),
        "estimate_us_per_call": {"cached": round(est_cached, 1),
                                 "uncached": round(est_uncached, 1)},
    }
    emit("tracker", {"events": n, "agents": AGENTS, "repeat": repeat,
                     "conversation_turns": 20, "system_prompt_bytes": 4096, "tools": 10},
         results, ("anyio", "tiktoken", "pydantic"), args.json)


if __name__ == "__main__":
    main()
