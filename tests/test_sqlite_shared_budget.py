"""R1.2/R1.5 across processes on one SQLite file: the day budget holds for all of them.

Several orchestrators (or ``serve`` replicas) of one host may share one SQLite file
(``store = "sqlite:///shared.db"``, each with its own state directory): they share
the day scope.  Each used to see the others' spend only as of its own open, so
together they spent up to N times the day budget.  ``SqliteStore`` is now a
``BudgetLedger``: every call in flight is held in the file, checked against the
committed totals and the holds of every process in one write transaction.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import BudgetExceededError, TaskSpec, Usage, UsageEvent
from scheduler.budget import TaskProfile, Tracker
from scheduler.config import Limits, VibeConfig
from scheduler.core import FixedWallClock, StoreUnavailableError, SystemWallClock, Totals
from scheduler.store import SqliteStore
from scheduler.store._ledger import Hold, ScopeLimit
from scheduler.testing import FRIDAY, ScriptedProvider, build_orchestrator, run_virtual

LIMIT = 2_000
DAY = f"day:{FRIDAY.isoformat()}"


class _Caller:
    """Calls the model again and again: 1 prompt token (the estimate counts more) and
    ``max_tokens`` completion tokens, so a call never uses more than its estimate."""

    async def run(self, ctx: Any) -> None:
        for _ in range(40):
            await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=100)


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _day_tokens(db: Path) -> int:
    [(tokens,)] = _rows(db, "SELECT prompt_tokens + completion_tokens FROM totals "
                            "WHERE scope LIKE 'day:%'")
    return int(tokens)


def test_r1_2_r1_5_two_orchestrators_on_one_sqlite_file_stay_within_the_day_budget(
        tmp_path: Path) -> None:
    """R1.2, R1.5: two orchestrators (own state directories, one store file, a day cap
    of 2,000 tokens), two agents each calling until stopped.  Every call uses at most
    its estimate, so the day's recorded total never passes the cap (before: each spent
    the cap, 2x in total); both pause their tasks (budget exceeded) instead."""
    db = tmp_path / "shared.db"

    async def main() -> list[list[str]]:
        orchs = [build_orchestrator({"c": _Caller}, config=VibeConfig(
            state_dir=tmp_path / name, store=f"sqlite:///{db}", session_id=name,
            budgets={"session": {}, "day": {"tokens": LIMIT}, "weekend_day_cost_usd": None},
            alerts={"decision_timeout_s": 5.0},
        ), provider=ScriptedProvider(latency_s=0.5, prompt=1, completion=100))
            for name in ("one", "two")]
        async with anyio.create_task_group() as tg:
            for i, orch in enumerate(orchs):
                tg.start_soon(orch.run, [TaskSpec(id=f"t{i}{j}", agent="c", prompt="x")
                                         for j in range(2)])
        return [[e.name for e in o.bus.history] for o in orchs]

    histories = run_virtual(main)
    day = _day_tokens(db)
    assert LIMIT - 500 < day <= LIMIT  # spent nearly all of it, never more
    sessions = dict(_rows(db, "SELECT scope, prompt_tokens + completion_tokens FROM totals "
                              "WHERE scope LIKE 'session:%'"))
    assert sum(sessions.values()) == day and all(sessions.values())  # both spent
    for names in histories:
        assert names.count("task_paused") == 2  # each stopped by the shared day budget
    assert _rows(db, "SELECT COUNT(*) FROM holds") == [(0,)]  # every hold settled


async def _reserve(store: SqliteStore, i: int, tokens: int, out: list[Any]) -> None:
    try:
        out.append(await store.try_reserve(f"h{i}", (ScopeLimit(DAY, tokens=1_000),),
                                           model="sonnet", tokens=tokens, cost_usd=0.0))
    except BudgetExceededError as exc:
        out.append(exc.dimension)


def test_r1_2_concurrent_holds_from_two_stores_grant_exactly_what_fits(tmp_path: Path) -> None:
    """R1.2: two stores on one file, 300 of 1,000 tokens spent, 20 concurrent holds of
    100 (each store's share one transaction): exactly 7 are granted."""
    db = tmp_path / "v.db"

    async def main() -> tuple[list[Hold | str], list[tuple[int, float]]]:
        a, b = SqliteStore(db), SqliteStore(db)
        await a.open()
        await b.open()
        await a.record(UsageEvent(event_id="earlier", task_id="e", session_id="s",
                                  day=FRIDAY.isoformat(), at=0.0, model="sonnet",
                                  usage=Usage(prompt_tokens=300)))
        out: list[Hold | str] = []
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(_reserve, a if i % 2 else b, i, 100, out)
        await a.aclose()
        await b.aclose()
        return out, [h.held[DAY] for h in out if isinstance(h, Hold)]

    out, held = run_virtual(main)
    granted = [h for h in out if isinstance(h, Hold)]
    assert len(granted) == 7 and out.count("tokens") == 13
    # no totals to take over: the trackers' scopes follow their own charges (a snapshot
    # would race with the charges committed before its caller resumes)
    assert all(h.totals == {} for h in granted)
    assert sorted(t for t, _ in held) == [100 * k for k in range(1, 8)]  # checked in order
    assert _rows(db, "SELECT COUNT(*), SUM(tokens) FROM holds") == [(7, 700)]
    assert _rows(db, "SELECT scope, tokens, n FROM hold_sums") == [(DAY, 700, 7)]


def test_r1_2_an_expired_hold_stops_counting_and_a_renewed_one_does_not(
        tmp_path: Path) -> None:
    """R1.2: a hold lapses ``hold_ttl_s`` after its grant or its last renewal (wall
    clock); renewing a lapsed hold answers False."""
    db = tmp_path / "v.db"
    now = [1_000.0]

    async def main() -> list[object]:
        a = SqliteStore(db, hold_ttl_s=10.0, now=lambda: now[0])
        b = SqliteStore(db, hold_ttl_s=10.0, now=lambda: now[0])
        await a.open()
        await b.open()
        seen: list[object] = []
        held: list[Hold | str] = []
        await _reserve(a, 0, 900, held)
        hold = held[0]
        assert isinstance(hold, Hold)
        now[0] += 9
        seen.append(await a.renew(hold))  # alive until 1,019
        now[0] += 6
        await _reserve(b, 1, 200, seen)  # refused: still held
        now[0] += 5
        seen.append(await a.renew(hold))  # lapsed at 1,019
        await _reserve(b, 2, 200, seen)  # granted
        await a.aclose()
        await b.aclose()
        return seen

    seen = run_virtual(main)
    assert seen[:3] == [True, "tokens", False]
    assert isinstance(seen[3], Hold)
    assert _rows(db, "SELECT scope, tokens, n FROM hold_sums") == [(DAY, 200, 1)]


#: Takes a hold of 900 of 1,000 tokens, says so, and waits to be killed.
_HOLDER = textwrap.dedent(
    """
    import sys, anyio
    from scheduler.store import SqliteStore
    from scheduler.store._ledger import ScopeLimit

    async def main(path, scope):
        store = SqliteStore(path)
        await store.open()
        await store.try_reserve("killed:hold", (ScopeLimit(scope, tokens=1000),),
                                model="sonnet", tokens=900, cost_usd=0.0)
        print("held", flush=True)
        await anyio.sleep_forever()

    anyio.run(main, sys.argv[1], sys.argv[2])
    """
)


def test_r1_5_the_hold_of_a_killed_process_stops_counting_at_once(tmp_path: Path) -> None:
    """R1.5: a process SIGKILLed with a hold (its TTL ten minutes away) blocks the day
    budget while it runs, and not once it is gone (same host, pid no longer running)."""
    db = tmp_path / "v.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db), DAY], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

        async def attempt() -> Hold | str:
            store = SqliteStore(db)
            await store.open()
            out: list[Hold | str] = []
            await _reserve(store, 1, 200, out)
            await store.aclose()
            return out[0]

        assert run_virtual(attempt) == "tokens"  # its process runs: the hold counts
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert isinstance(run_virtual(attempt), Hold)
        assert _rows(db, "SELECT hold_id FROM holds") == [("h1",)]  # the dead one pruned
        assert _rows(db, "SELECT scope, tokens, n FROM hold_sums") == [(DAY, 200, 1)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _tracker(store: SqliteStore) -> Tracker:
    config = VibeConfig(budgets={"session": {}, "day": {"tokens": 10_000},
                                 "weekend_day_cost_usd": None})
    return Tracker(store, config, session_id="s", wall=FixedWallClock(FRIDAY))


def test_r1_2_a_hold_is_released_when_its_call_fails_and_settled_with_its_event(
        tmp_path: Path) -> None:
    """R1.2: the tracker's hold is in the file while its call is in flight; a call that
    fails before any usage releases it; a charged call's event, the end of its hold and
    of its open_call record are one transaction."""
    db = tmp_path / "v.db"

    async def main() -> list[object]:
        store = SqliteStore(db)
        await store.open()
        tracker = _tracker(store)
        await tracker.open()
        profile = TaskProfile("code_modification", "moderate", Limits(), False, False)
        await tracker.start_task("t", profile, agent="a")
        seen: list[object] = []
        failed = await tracker.reserve_shared("t", model="sonnet", tokens=500, cost_usd=0.0)
        seen.append(_rows(db, "SELECT scope, tokens FROM holds ORDER BY scope"))
        await tracker.release(failed)
        seen.append(_rows(db, "SELECT COUNT(*) FROM holds"))
        call = await tracker.reserve_shared("t", model="sonnet", tokens=500, cost_usd=0.0)
        await tracker.open_call(call, prompt_tokens=400, output_tokens=100)
        batches = store.group.batches
        event = tracker.make_event("t", model="sonnet", usage=Usage(prompt_tokens=450))
        await tracker.charge(event, call)
        seen.append(store.group.batches - batches)
        seen.append(_rows(db, "SELECT (SELECT COUNT(*) FROM holds), "
                              "(SELECT COUNT(*) FROM open_calls), (SELECT COUNT(*) FROM events)"))
        await store.aclose()
        return seen

    seen = run_virtual(main)
    assert seen == [[(DAY, 500), ("session:s", 500)], [(0,)], 1, [(0, 0, 1)]]


def _event_e1() -> UsageEvent:
    """A 100-token sonnet event of task t, session s, today."""
    return UsageEvent(event_id="e1", task_id="t", session_id="s", day=FRIDAY.isoformat(),
                      at=0.0, model="sonnet", usage=Usage(prompt_tokens=100))


def test_r1_2_a_repeated_event_still_ends_its_hold(tmp_path: Path) -> None:
    """R1.2: settling with an event already recorded answers False; the hold ends."""
    db = tmp_path / "v.db"
    event = _event_e1()

    async def main() -> list[object]:
        store = SqliteStore(db)
        await store.open()
        assert await store.record(event)
        held: list[Hold | str] = []
        await _reserve(store, 0, 100, held)
        assert isinstance(held[0], Hold)
        added = await store.settle(event, held[0])
        await store.aclose()
        return [added, _rows(db, "SELECT COUNT(*) FROM holds"), _day_tokens(db)]

    assert run_virtual(main) == [False, [(0,)], 100]


def test_r1_2_without_a_limit_nothing_is_held(tmp_path: Path) -> None:
    """R1.2: no limit on any shared scope: nothing to check, so no hold is written (a
    single process pays no write for it); the event is still recorded at settle."""
    db = tmp_path / "v.db"
    event = _event_e1()

    async def main() -> list[object]:
        store = SqliteStore(db)
        await store.open()
        hold = await store.try_reserve("h", (ScopeLimit(DAY), ScopeLimit("session:s")),
                                       model="sonnet", tokens=100, cost_usd=0.0)
        seen: list[object] = [hold.scopes, store.hold_group.batches,
                              _rows(db, "SELECT COUNT(*) FROM holds")]
        seen.append(await store.settle(event, hold))
        await store.aclose()
        return [*seen, _day_tokens(db)]

    assert run_virtual(main) == [(), 0, [(0,)], True, 100]


def test_r1_2_a_locked_file_refuses_new_holds(tmp_path: Path) -> None:
    """R1.2 fail-closed: while another connection keeps the file locked past
    ``retry_s``, a new hold raises StoreUnavailableError (the tracker waits for the file
    up to ``distributed.unavailable_wait_s``, then fails the call) -- never granted
    unchecked."""
    db = tmp_path / "v.db"

    async def main() -> None:
        store = SqliteStore(db, retry_s=0.5)
        await store.open()
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailableError, match="locked"):
                await store.try_reserve("h", (ScopeLimit(DAY, tokens=1_000),),
                                        model="sonnet", tokens=100, cost_usd=0.0)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.try_reserve("h", (ScopeLimit(DAY, tokens=1_000),),
                                model="sonnet", tokens=100, cost_usd=0.0)
        await store.aclose()

    run_virtual(main)
    assert _rows(db, "SELECT hold_id, tokens FROM holds") == [("h", 100)]


def test_r1_5_a_settle_spooled_while_locked_ends_its_hold_when_replayed(
        tmp_path: Path) -> None:
    """R1.5: usage settled while the file stays locked is spooled, not lost; its hold
    keeps counting until the spool is replayed, which ends it with the event."""
    db = tmp_path / "v.db"
    event = UsageEvent(event_id="e1", task_id="t", session_id="s", day=FRIDAY.isoformat(),
                       at=0.0, model="sonnet", usage=Usage(prompt_tokens=80))

    async def main() -> list[object]:
        store = SqliteStore(db, retry_s=0.2)
        await store.open()
        held: list[Hold | str] = []
        await _reserve(store, 0, 100, held)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        assert isinstance(held[0], Hold) and await store.settle(event, held[0])
        other.execute("ROLLBACK")
        other.close()
        seen: list[object] = [len(store.spool), _rows(db, "SELECT COUNT(*) FROM holds")]
        await store.aclose()  # replays the spool
        return [*seen, _rows(db, "SELECT COUNT(*) FROM holds"), _day_tokens(db)]

    assert run_virtual(main) == [1, [(1,)], [(0,)], 80]


def test_r2_1_a_copy_of_totals_has_every_field_and_its_own_model_table() -> None:
    """R2.1: the totals a hold hands out are copies (each tracker adds to its own): every
    field kept, the per-model table not shared."""
    original = Totals(**{f.name: i + 1 for i, f in enumerate(fields(Totals))
                         if f.name != "tokens_by_model"}, tokens_by_model={"sonnet": 7})
    copy = original.copy()
    assert copy == original and copy is not original
    copy.tokens_by_model["sonnet"] += 1
    assert original.tokens_by_model == {"sonnet": 7}


def test_r1_2_a_tracker_with_no_shared_limit_takes_no_hold(tmp_path: Path) -> None:
    """R1.2: no limit on the session or the day: a call is not held in the file (no
    write, no hold to settle); its charge is the one write it was before."""
    db = tmp_path / "v.db"

    async def main() -> list[object]:
        store = SqliteStore(db)
        await store.open()
        tracker = Tracker(store, VibeConfig(budgets={"session": Limits(), "day": Limits(),
                                                     "weekend_day_cost_usd": None}),
                          session_id="s", wall=FixedWallClock(FRIDAY))
        await tracker.open()
        profile = TaskProfile("code_modification", "moderate", Limits(), False, False)
        await tracker.start_task("t", profile, agent="a")
        call = await tracker.reserve_shared("t", model="sonnet", tokens=500, cost_usd=0.01)
        held = call.hold
        await tracker.open_call(call, prompt_tokens=400, output_tokens=100)
        batches = store.group.batches
        await tracker.charge(tracker.make_event("t", model="sonnet",
                                                usage=Usage(prompt_tokens=450)), call)
        seen = [held, store.hold_group.batches, store.group.batches - batches]
        await store.aclose()
        return [*seen, _day_tokens(db)]

    assert run_virtual(main) == [None, 0, 1, 450]


_OPENER = textwrap.dedent(
    """
    import sys, time, anyio
    from scheduler.store import SqliteStore

    async def main(path):
        store = SqliteStore(path)
        await store.open()
        await store.aclose()

    start, paths = float(sys.argv[1]), sys.argv[2:]
    for k, path in enumerate(paths):  # every process opens each new file at one instant
        while time.time() < start + 0.25 * k:
            pass
        anyio.run(main, path)
    print("opened", len(paths))
    """)


def test_r1_5_processes_started_together_on_a_new_file_all_open_it(tmp_path: Path) -> None:
    """R1.5: orchestrators (or ``serve`` replicas) started at once on a new SQLite file
    all create its schema; each waits for the lock the first holds instead of exiting
    with "database is locked" (before: 9 runs of 10 had a process fail)."""
    paths = [str(tmp_path / f"new{k}" / "shared.db") for k in range(6)]
    start = SystemWallClock().timestamp() + 2.0  # the children's imports done by then
    procs = [subprocess.Popen(
        [sys.executable, "-c", _OPENER, str(start), *paths], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [out.strip() for out, _ in outs] == ["opened 6"] * 4, [err for _, err in outs]
    for path in paths:
        assert _rows(Path(path), "SELECT count(*) FROM totals") == [(0,)]
