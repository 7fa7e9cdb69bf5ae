"""The settle path's shortcuts notice what they depend on (#22): a charge adds to its
scopes without a wait unless a day scope is not loaded yet, the allocator takes a new
token fraction without a reindex only while nothing it feeds changes, and the gateway
mirrors the alert flags without a lookup only while no scope has any."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from policies.fairness import PriorityWithFairness, WaiterView
from scheduler import Completion, CompletionRequest, Limits, TaskSpec, Usage, VibeConfig
from scheduler.allocator import Allocator, open_allocator
from scheduler.budget import resolve_task
from scheduler.core import FixedWallClock, UsageEvent
from scheduler.runtime import AgentContext
from scheduler.store import SqliteStore, Store, task_day_scope
from scheduler.store._base import OPEN_CALL
from scheduler.store._spool import SpooledEvent, SpooledState
from scheduler.store._sqlite_sql import apply, init_schema
from scheduler.testing import FRIDAY, ScriptedProvider, build_orchestrator
from tests._allocator_helpers import pool_config
from tests._helpers import Tracker, event

pytestmark = pytest.mark.anyio


async def test_r1_5_a_charge_on_a_day_not_loaded_yet_counts_once(store: Store) -> None:
    """R1.2/R1.5: a call that ends after midnight is charged to the new day, whose totals
    (the day's and the task's per-day scope's) are read from the store after the event
    was recorded: they hold it once, and the next charge adds to them in memory."""
    wall = FixedWallClock(FRIDAY)
    tracker = Tracker(store, VibeConfig(), session_id="s1", wall=wall)
    await tracker.open()
    spec = TaskSpec(id="t1", agent="coder", prompt="Fix the bug in parser",
                    day_budget=Limits(tokens=100_000))
    await tracker.start_task("t1", resolve_task(spec, VibeConfig()), agent="coder")
    await tracker.charge(tracker.make_event("t1", model="sonnet", usage=Usage(100, 50)))
    wall.at += timedelta(days=1)  # midnight passed while the next call ran
    saturday = wall.today().isoformat()
    for n in (1, 2):
        await tracker.charge(tracker.make_event("t1", model="sonnet", usage=Usage(10, 5)))
        for name in (f"day:{saturday}", task_day_scope("t1", saturday)):
            scope = tracker.scope_named("t1", name)
            assert scope is not None
            assert scope.totals.tokens == 15 * n, name
            assert (await store.totals(name)).tokens == 15 * n, name
    assert tracker.task_scope("t1").totals.tokens == 150 + 30
    assert tracker.session.totals.tokens == 150 + 30


async def test_r3_1_a_charge_reports_each_scopes_crossings_once(store: Store) -> None:
    """R3.1: a charge reports the thresholds each of its scopes passed, once."""
    config = VibeConfig(budgets={"session": Limits(tokens=1_000)})
    tracker = Tracker(store, config, session_id="s1", wall=FixedWallClock(FRIDAY))
    await tracker.open()
    spec = TaskSpec(id="t1", agent="coder", prompt="Fix the bug", budget=Limits(tokens=500))
    await tracker.start_task("t1", resolve_task(spec, config), agent="coder")
    first = await tracker.charge(event(1, task="t1", prompt=300, completion=60))
    assert {(c.scope, c.level) for c in first} == {("task:t1", "warning")}
    again = await tracker.charge(event(2, task="t1", prompt=400, completion=0))
    assert {(c.scope, c.level) for c in again} == {
        ("task:t1", "critical"), ("task:t1", "exceeded"), ("session:s1", "warning")}
    assert await tracker.charge(event(3, task="t1", prompt=1, completion=0)) == []


class _NoAgingOnceSpent(PriorityWithFairness):
    """A request of a task past 80 % of its tokens does not age: its priority reads the
    token fraction beyond the demotion threshold (which the starting level reflects)."""

    def priority(self, waiter: WaiterView, now: float) -> int:
        if waiter.token_fraction >= 0.8:
            return self.enqueue_priority(waiter.base_priority, waiter.token_fraction,
                                         waiter.blocking)
        return super().priority(waiter, now)


#: Guards off: pure policy order (no lag bound, no background floor).
NO_GUARDS: dict[str, Any] = {"fairness_slack_tokens": 1e12, "background_min_share": 0.0}


async def _wait_once(alloc: Allocator, holder: str, used: int) -> None:
    """``holder`` waits for the one slot once (its account keeps the waiter record),
    then uses ``used`` tokens (its service counter)."""
    occupier = await alloc.acquire("occupier")
    async with anyio.create_task_group() as tg:
        tg.start_soon(_take_and_settle, alloc, holder, used, [])
        await anyio.sleep(0.001)
        alloc.settle(occupier.id, 0)


async def _take_and_settle(alloc: Allocator, holder: str, used: int,
                           trace: list[str]) -> None:
    lease = await alloc.acquire(holder)
    trace.append(holder)
    alloc.settle(lease.id, used)


def _priority_of(alloc: Allocator, holder: str) -> int:
    (w,) = alloc.statistics().waiting(holder)
    return w.effective_priority


async def test_r5_2_a_new_token_fraction_reaches_the_next_waits_priority() -> None:
    """R5.2: a token fraction fed while the task waits nowhere (the settle after each
    call) is the one its next wait is ordered by: its starting level (demoted above
    50 %: a less served task of the same class goes first) and the policy's view of the
    waiter (here: no aging past 80 %)."""
    trace: list[str] = []
    policy = _NoAgingOnceSpent()
    async with open_allocator(pool_config(concurrent=1, **NO_GUARDS), policy=policy) as alloc:
        await _wait_once(alloc, "spender", 100)
        await _wait_once(alloc, "saver", 10_000)  # served more: last at an equal level
        alloc.set_token_fraction("spender", 0.6)  # demoted: a new starting level
        alloc.set_token_fraction("spender", 0.9)  # the same level, the policy's view not
        occupier = await alloc.acquire("occupier")
        async with anyio.create_task_group() as tg:
            for holder in ("spender", "saver"):
                tg.start_soon(_take_and_settle, alloc, holder, 100, trace)
                await anyio.sleep(0.001)
            alloc.settle(occupier.id, 0)
        assert trace == ["saver", "spender"]
        occupier = await alloc.acquire("occupier")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_take_and_settle, alloc, "spender", 100, trace)
            await anyio.sleep(0.001)
            assert _priority_of(alloc, "spender") == 1  # normal (2) − 1
            await anyio.sleep(31)  # one aging step later
            assert _priority_of(alloc, "spender") == 1  # not aged: the fraction is 0.9
            alloc.settle(occupier.id, 0)


class _UsageByTask(ScriptedProvider):
    """Answers at once with the usage given for the call's task (else 100 + 50 tokens)."""

    def __init__(self, usage: dict[str, Usage]) -> None:
        super().__init__()
        self.usage = usage

    async def complete(self, request: CompletionRequest) -> Completion:
        usage = self.usage.get(request.task_id, Usage(100, 50))
        return Completion("ok", usage, request.model)


class _CallsAndRecords:
    """Sleeps ``params.sleep`` s, makes one call, records its alert signals."""

    seen: dict[str, tuple[bool, str]] = {}

    async def run(self, ctx: AgentContext) -> None:
        await anyio.sleep(float(ctx.task.params.get("sleep", 0)))
        await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=10,
                               model="haiku")
        signals = ctx.handle.signals
        self.seen[ctx.task.id] = (signals.prefer_cheaper, signals.alert_level)


async def test_r3_2_a_session_warning_reaches_the_next_call_of_every_task(
    tmp_path: Path,
) -> None:
    """R3.2: once a charge passes the session's warning threshold, the next call of any
    task of the session -- one that crossed nothing itself -- mirrors the flag; before,
    every call mirrors the defaults."""
    roomy = Limits(tokens=10_000_000)  # the tasks' own budgets stay below every threshold
    # nothing passed; then 75 % of the session, in output (the input calibrates estimates)
    runs: tuple[dict[str, Usage], ...] = ({}, {"big": Usage(5, 14_995)})
    seen = []
    for n, usage in enumerate(runs):
        config = VibeConfig(state_dir=tmp_path / str(n), store="memory",
                            budgets={"session": Limits(tokens=20_000)})
        orch = build_orchestrator({"a": _CallsAndRecords}, config=config,
                                  provider=_UsageByTask(usage))
        _CallsAndRecords.seen = {}
        await orch.run([TaskSpec(id="big", agent="a", prompt="x", budget=roomy),
                        TaskSpec(id="small", agent="a", prompt="x", budget=roomy,
                                 params={"sleep": 1})])
        seen.append(_CallsAndRecords.seen)
    assert seen[0] == {"big": (False, "ok"), "small": (False, "ok")}
    assert seen[1] == {"big": (True, "warning"), "small": (True, "warning")}


async def _record_together(store: SqliteStore, writes: list[tuple[UsageEvent, str]]
                           ) -> list[bool]:
    """Record each event (closing its open-call key, if any) in one loop turn: one batch."""
    batches = store.group.batches
    out: dict[int, bool] = {}

    async def one(i: int, ev: UsageEvent, key: str) -> None:
        out[i] = bool(await (store.record_and_delete_state(ev, OPEN_CALL, key) if key
                             else store.record(ev)))

    async with anyio.create_task_group() as tg:
        for i, (ev, key) in enumerate(writes):
            tg.start_soon(one, i, ev, key)
    assert store.group.batches == batches + 1  # one commit for them all
    return [out[i] for i in range(len(writes))]


async def test_r2_1_an_event_twice_in_one_batch_is_recorded_and_counted_once(
    tmp_path: Path,
) -> None:
    """R2.1: the events of one commit are inserted together; one recorded before, or
    twice in the batch, still answers False and adds to no total again."""
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    await store.record(event(1))
    fresh = await _record_together(store, [(event(1), ""), (event(2), ""), (event(2), ""),
                                           (event(3), "")])
    assert fresh[0] is False and fresh[3] is True
    assert sorted(fresh[1:3]) == [False, True]  # the first of the two in the batch
    assert (await store.totals("session:s1")).tokens == 3 * 150
    assert (await store.totals("task:t1")).calls == 3
    assert [e.event_id for e in await store.events()] == ["e1", "e2", "e3"]
    await store.aclose()


async def test_r2_1_open_calls_closed_in_one_batch_are_gone_whatever_their_form(
    tmp_path: Path,
) -> None:
    """R2.1: the open-call records a batch's charges close are deleted together -- one
    kept as JSON (a record of another shape) and a key already gone included."""
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    await store.put_state(OPEN_CALL, "as-json", {"shape": "not a row"})
    fresh = await _record_together(store, [(event(1), "as-json"), (event(2), "gone")])
    assert fresh == [True, True]
    assert await store.list_state(OPEN_CALL) == {}
    await store.aclose()


def test_r2_1_an_open_call_written_after_its_key_was_closed_in_the_batch_stays(
    tmp_path: Path,
) -> None:
    """R2.1: the closes of a batch are deleted together, but before a later write of the
    same key: the record written last stays (a transaction's writes keep their order)."""
    db = sqlite3.connect(tmp_path / "vibe.db", isolation_level=None)
    init_schema(db)
    value = {"shape": "kept as JSON"}
    apply(db, [SpooledState(OPEN_CALL, "k", value, json.dumps(value))])
    apply(db, [SpooledEvent(event(1)), SpooledState(OPEN_CALL, "k", None),
               SpooledState(OPEN_CALL, "k", value, json.dumps(value)),
               SpooledEvent(event(2)), SpooledState(OPEN_CALL, "other", None)])
    rows = db.execute("SELECT key, value FROM state WHERE kind = ?", (OPEN_CALL,)).fetchall()
    assert rows == [("k", json.dumps(value))]
    db.close()
