"""RedisStore: the store contract on memory, SQLite and Redis, plus the shared extensions.

Redis cases use the real server on 127.0.0.1:6379 with a fresh namespace each;
they skip when it is unreachable unless VIBE_REQUIRE_REDIS=1 (then they fail).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path

import anyio
import pytest

from scheduler import BudgetExceededError, TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.config import DistributedConfig
from scheduler.core import FixedWallClock
from scheduler.store import MemoryStore, SqliteStore, Store, open_store
from scheduler.store._ledger import BudgetLedger, ScopeLimit, SliceBackend
from scheduler.store._redis import RedisStore, split_namespace
from scheduler.testing import run_real
from tests._redis_helpers import REDIS_URL, redis_or_skip
from tests._store_cases import DAY, ev, open_tracker, session_config, session_limits

KINDS = ["memory", "sqlite", "redis"]



StoreFactory = Callable[[], Store]


@pytest.fixture(params=KINDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of (unopened) stores of one kind that all see the same data."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "vibe.db")
    ns: str = request.getfixturevalue("redis_ns")
    return lambda: RedisStore(REDIS_URL, namespace=ns, spool_path=tmp_path / "spool.jsonl")


def with_store(make: StoreFactory, body: Callable[[Store], Awaitable[None]]) -> None:
    async def main() -> None:
        s = make()
        await s.open()
        try:
            await body(s)
        finally:
            await s.aclose()
    run_real(main)


# -- the store contract ------------------------------------------------------------------


def test_r2_1_record_is_idempotent_and_charges_every_scope(make_store: StoreFactory) -> None:
    """R2.1/R1.2: one event charges task, session and day once; a retry charges nothing."""
    async def body(s: Store) -> None:
        assert await s.record(ev(1)) is True
        assert await s.record(ev(1)) is False
        assert await s.record(ev(2, model="haiku", file_edits=2, shell_commands=1,
                                    dangerous_commands=1)) is True
        assert await s.record(ev(3, model="", prompt=0, completion=0, cost=0.0, file_edits=1))
        for scope in ("task:t1", "session:s1", f"day:{DAY}"):
            t = await s.totals(scope)
            assert (t.prompt_tokens, t.completion_tokens) == (200, 100)
            assert (t.cache_read_tokens, t.cache_write_tokens) == (21, 15)
            assert t.tokens == 336
            assert t.cost_usd == pytest.approx(0.02)
            assert (t.file_edits, t.shell_commands, t.dangerous_commands) == (3, 1, 1)
            assert t.calls == 2
            assert t.tokens_by_model == {"sonnet": 162, "haiku": 162}
        assert (await s.totals("task:nope")).tokens == 0
    with_store(make_store, body)


def test_r2_6_events_filter_by_task_and_day_in_order(make_store: StoreFactory) -> None:
    """R2.6: the usage log answers per task and per day range."""
    async def body(s: Store) -> None:
        await s.record(ev(3, task="t2", day="2026-11-28"))
        await s.record(ev(1))
        await s.record(ev(2, task="t2"))
        def ids(events: list[UsageEvent]) -> list[str]:
            return sorted(e.event_id for e in events)
        assert ids(await s.events()) == ["e1", "e2", "e3"]
        assert ids(await s.events(task_id="t2")) == ["e2", "e3"]
        assert ids(await s.events(day_from="2026-11-28")) == ["e3"]
        assert ids(await s.events(day_from=DAY, day_to=DAY)) == ["e1", "e2"]
        got = (await s.events(task_id="t1"))[0]
        assert got == ev(1)
    with_store(make_store, body)


def test_state_records_round_trip(make_store: StoreFactory) -> None:
    async def body(s: Store) -> None:
        await s.put_state("pause", "t1", {"reason": "budget", "n": [1, 2]})
        await s.put_state("pause", "t0", {"reason": "x"})
        assert await s.get_state("pause", "t1") == {"reason": "budget", "n": [1, 2]}
        assert sorted(await s.list_state("pause")) == ["t0", "t1"]
        await s.delete_state("pause", "t1")
        assert await s.get_state("pause", "t1") is None
        assert await s.list_state("nothing") == {}
    with_store(make_store, body)


def test_r1_5_day_totals_survive_reopening(make_store: StoreFactory) -> None:
    """R1.5: a new store instance (a restarted process) sees what the day already spent."""
    async def first(s: Store) -> None:
        await s.record(ev(1))

    async def second(s: Store) -> None:
        assert (await s.totals(f"day:{DAY}")).tokens == 162
        assert await s.record(ev(1)) is False
    with_store(make_store, first)
    with_store(make_store, second)


def test_which_stores_offer_the_shared_extensions(tmp_path: Path) -> None:
    """MemoryStore offers neither; a SQLite file (shared by the processes of one host)
    is a shared budget ledger but shares no quota slices; Redis offers both."""
    assert not isinstance(MemoryStore(), BudgetLedger)
    assert not isinstance(MemoryStore(), SliceBackend)
    assert isinstance(SqliteStore(tmp_path / "x.db"), BudgetLedger)
    assert not isinstance(SqliteStore(tmp_path / "x.db"), SliceBackend)
    r = RedisStore(REDIS_URL)
    assert isinstance(r, BudgetLedger) and isinstance(r, SliceBackend) and isinstance(r, Store)


def test_open_store_routes_redis_urls_with_namespace(tmp_path: Path) -> None:
    cfg = DistributedConfig(namespace="dep1", failure_mode="open")
    s = open_store("redis://127.0.0.1:6379/0?namespace=blue", tmp_path, distributed=cfg)
    assert isinstance(s, RedisStore)
    assert s.namespace == "blue" and s.prefix == "vibe:{blue}:"
    assert s.url == "redis://127.0.0.1:6379/0"
    assert s.config.failure_mode == "open"
    assert s.spool.path == tmp_path / "redis-spool.jsonl"
    assert split_namespace("redis://h:1/2?a=b") == ("redis://h:1/2?a=b", None)


# -- atomic shared holds -----------------------------------------------------------------


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r1_2_shared_hold_is_all_or_nothing_and_settles(
    redis_ns: str, tmp_path: Path,
) -> None:
    """R1.2 across processes: a hold is granted only if every scope has room."""
    s = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "sp")
    await s.open()
    await s.record(ev(1))  # 162 tokens, $0.01
    h1 = await s.try_reserve("h1", session_limits(500), model="sonnet", tokens=300, cost_usd=0.5)
    assert h1.totals["session:s1"].tokens == 162
    assert h1.held["session:s1"][0] == 300
    assert h1.held["session:s1"][1] == pytest.approx(0.5)
    with pytest.raises(BudgetExceededError) as err:
        await s.try_reserve("h2", session_limits(500), model="sonnet", tokens=100, cost_usd=0.0)
    assert (err.value.scope, err.value.dimension) == ("session:s1", "tokens")
    assert err.value.used == 462 and err.value.limit == 500
    with pytest.raises(BudgetExceededError) as err:  # day cost: 0.01 + 0.5 + 0.6 > 1.0
        await s.try_reserve("h3", session_limits(10_000), model="haiku", tokens=1, cost_usd=0.6)
    assert err.value.dimension == "cost_usd" and err.value.scope == f"day:{DAY}"
    # nothing of the refused holds was kept: settling h1 frees its 300 tokens
    assert await s.settle(ev(2, prompt=10, completion=10), h1) is True
    h4 = await s.try_reserve("h4", session_limits(500), model="sonnet", tokens=300, cost_usd=0.0)
    assert h4.totals["session:s1"].tokens == 162 + 32
    await s.release(h4)
    h5 = await s.try_reserve("h5", session_limits(500, model_limit=250), model="sonnet",
                             tokens=40, cost_usd=0.0)
    with pytest.raises(BudgetExceededError) as err:
        await s.try_reserve("h6", session_limits(500, model_limit=250), model="sonnet",
                            tokens=20, cost_usd=0.0)
    assert err.value.dimension == "tokens:sonnet"
    assert h5.tokens == 40
    await s.aclose()


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_hold_of_a_dead_process_expires(redis_ns: str, tmp_path: Path) -> None:
    """A hold never settled (its process died) is released hold_ttl_s after its grant or
    its last renewal — a live process renews it while its call waits for a lease (server
    time replaced by an injected clock here); renewing an expired hold says so."""
    now = [1_000_000]
    cfg = DistributedConfig(hold_ttl_s=5.0)

    s = RedisStore(REDIS_URL, namespace=redis_ns, config=cfg, spool_path=tmp_path / "sp",
                   now_ms=lambda: now[0])
    await s.open()
    dead = await s.try_reserve("dead", session_limits(100), model="sonnet", tokens=100,
                               cost_usd=0.0)
    for _ in range(3):  # 12 s, renewed every 4 s: still held
        now[0] += 4_000
        assert await s.renew(dead)
    with pytest.raises(BudgetExceededError):
        await s.try_reserve("h", session_limits(100), model="sonnet", tokens=1, cost_usd=0.0)
    now[0] += 5_001  # the renewals stopped: expired a TTL after the last one
    h = await s.try_reserve("h", session_limits(100), model="sonnet", tokens=100, cost_usd=0.0)
    assert h.held["session:s1"][0] == 100
    assert not await s.renew(dead)
    await s.aclose()


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r1_2_concurrent_holds_from_three_clients_never_overspend(
    redis_ns: str, tmp_path: Path
) -> None:
    """Three clients racing 60 holds at one 10,000-token budget: at most 10 granted."""
    stores = [RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / f"s{i}")
              for i in range(3)]
    for s in stores:
        await s.open()
    granted: list[str] = []

    async def one(i: int) -> None:
        try:
            h = await stores[i % 3].try_reserve(f"h{i}", session_limits(10_000), model="sonnet",
                                                tokens=1_000, cost_usd=0.0)
        except BudgetExceededError:
            return
        granted.append(h.hold_id)

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    assert len(granted) == 10
    for s in stores:
        await s.aclose()


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_scripts_reload_after_script_flush(redis_ns: str, tmp_path: Path) -> None:
    """Scripts are called by SHA; a NOSCRIPT (Redis restarted) reloads them once."""
    s = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "sp")
    await s.open()
    client = redis_or_skip()
    client.script_flush()
    client.close()
    assert await s.record(ev(1)) is True
    assert (await s.totals("session:s1")).tokens == 162
    await s.aclose()


# -- tracker integration -----------------------------------------------------------------


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r1_2_two_trackers_share_one_session_budget(redis_ns: str, tmp_path: Path) -> None:
    """Two orchestrators' trackers on one Redis cannot both pass the same session check."""
    cfg = session_config(3_000)

    a = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "a")
    b = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "b")
    await a.open()
    await b.open()
    ta, tb = await open_tracker(a, cfg, "ta"), await open_tracker(b, cfg, "tb")
    ra = await ta.reserve_shared("ta", model="sonnet", tokens=2_000, cost_usd=0.0)
    assert ra.hold is not None
    with pytest.raises(BudgetExceededError):  # locally tb sees nothing spent
        await tb.reserve_shared("tb", model="sonnet", tokens=2_000, cost_usd=0.0)
    assert tb.session.reserved_tokens == 0  # the local reservation was undone
    await ta.charge(ta.make_event("ta", model="sonnet", usage=Usage(500, 500)), ra)
    rb = await tb.reserve_shared("tb", model="sonnet", tokens=2_000, cost_usd=0.0)
    assert tb.session.totals.tokens == 1_000  # refreshed from the shared totals
    await tb.release(rb)
    assert (await b.try_reserve("x", (ScopeLimit("session:shared", tokens=3_000),),
                                model="", tokens=2_000, cost_usd=0.0)).tokens == 2_000
    await a.aclose()
    await b.aclose()


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_reserve_shared_is_plain_reserve_on_local_stores() -> None:
    """MemoryStore: reserve_shared behaves exactly like reserve (no hold)."""
    tr = await open_tracker(MemoryStore(), session_config(3_000), "t")
    r = await tr.reserve_shared("t", model="sonnet", tokens=2_000, cost_usd=0.0)
    assert r.hold is None and tr.session.reserved_tokens == 2_000
    with pytest.raises(BudgetExceededError):
        await tr.reserve_shared("t", model="sonnet", tokens=2_000, cost_usd=0.0)
    await tr.release(r)
    assert tr.session.reserved_tokens == 0


# -- the real orchestrator ---------------------------------------------------------------


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r1_2_two_orchestrators_on_redis_share_one_session_budget(
    redis_ns: str, tmp_path: Path
) -> None:
    """Two real Orchestrators (gateway → reserve_shared → settle) with one session id on
    one Redis: together they never spend past the session budget, and every hold is
    settled or released at the end."""
    from agents.builtin import QuestionAnswerAgent
    from scheduler.runtime import Orchestrator
    from scheduler.testing import ScriptedProvider

    limit = 30_000

    statuses: list[str] = []

    async def run(i: int) -> None:
        cfg = VibeConfig.model_validate({
            "state_dir": str(tmp_path / f"o{i}"),
            "store": f"{REDIS_URL}?namespace={redis_ns}",
            "session_id": "shared",
            "budgets": {"session": {"tokens": limit}, "day": {},
                        "weekend_day_cost_usd": None},
            # nobody answers the pauses at the limit (R3.4): save and finish quickly
            "alerts": {"decision_timeout_s": 0.2},
        })
        orch = Orchestrator(cfg, provider=ScriptedProvider(latency_s=0.02),
                            agents={"qa": QuestionAnswerAgent},
                            wall=FixedWallClock(date(2026, 11, 27)))
        specs = [TaskSpec(id=f"o{i}-q{j}", agent="qa", prompt="What is this?")
                 for j in range(40)]
        report = await orch.run(specs)
        statuses.extend(o.status for o in report.outcomes.values())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0)
        tg.start_soon(run, 1)
    statuses = statuses
    client = redis_or_skip()
    try:
        spent = int(client.hget(f"vibe:{{{redis_ns}}}:tot:session:shared", "tokens") or 0)
        held = int(client.hget(f"vibe:{{{redis_ns}}}:amts:session:shared", "__sum") or 0)
    finally:
        client.close()
    assert 0 < spent <= limit
    assert held == 0
    # every completed task paid for its call (150 tokens each) out of the one shared budget:
    # the two orchestrators together never get more than the session allows, however the
    # calls interleave (how many complete depends on timing; what they spend does not)
    completed = statuses.count("completed")
    assert len(statuses) == 80 and completed > 0
    assert completed * 150 <= spent
