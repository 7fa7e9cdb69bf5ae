"""R3.5 across processes: one grace per scope and period for every process on a store.

Several orchestrators (or ``serve`` replicas) share the day scope of one SQLite file
or one Redis namespace.  Each used to decide grants from the records it loaded at
open, so N of them could each take the day's grace; now the grant is claimed in the
store and the overdraft's reservation is held where the others see it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from agents import AgentContext
from scheduler import BudgetExceededError, Event, Limits, TaskSpec, Usage, UsageEvent
from scheduler.config import VibeConfig, config_from_dict
from scheduler.core import OverdraftDeniedError
from scheduler.store import MemoryStore, SqliteStore, Store, put_state_if_absent
from scheduler.store._redis import RedisStore
from scheduler.testing import (
    FRIDAY,
    ScriptedProvider,
    build_orchestrator,
    run_real,
    run_virtual,
)
from tests._alerts_helpers import DAY, Harness, open_harness, profile
from tests._redis_helpers import REDIS_URL

LIMIT = 10_000
GRACE = 5_000
DAY_SCOPE = f"day:{DAY.isoformat()}"


def _config() -> VibeConfig:
    """Only the day is limited (tokens): the scope every process on the store shares."""
    return config_from_dict({"budgets": {"session": {}, "day": {"tokens": LIMIT},
                                         "weekend_day_cost_usd": None}})


async def _replica(store: Store, session: str) -> Harness:
    return await open_harness(_config(), store=store, tasks={f"t-{session}": profile()},
                              session_id=session)


async def _overdraw(h: Harness, tokens: int) -> str:
    """One call inside a critical section that crosses the day limit: "granted", or why
    the overdraft was denied."""
    task = h.tracker.tasks()[0]
    try:
        async with h.controller.open_critical(task, "file_write"):
            res = await h.controller.reserve(task, model="sonnet", tokens=tokens, cost_usd=0.0)
            event = h.tracker.make_event(task, model="sonnet", usage=Usage(prompt_tokens=tokens))
            await h.tracker.charge(event, res)
    except OverdraftDeniedError as exc:
        return exc.reason
    return "granted"


async def _spend_day(store: Store, tokens: int) -> None:
    h = await _replica(store, "earlier")
    await h.charge("t-earlier", model="sonnet", tokens=tokens)
    await h.controller.discard("t-earlier")


# -- the claim itself ----------------------------------------------------------------


async def _two_replicas_near_the_limit(db: Path) -> tuple[Harness, Harness]:
    """Replicas a and b on the SQLite file ``db``, opened once the day was spent to 100
    tokens under its limit."""
    first = SqliteStore(db)
    await first.open()
    await _spend_day(first, LIMIT - 100)
    await first.aclose()
    return await _replica(SqliteStore(db), "a"), await _replica(SqliteStore(db), "b")


async def _claims(stores: list[Store]) -> list[bool]:
    won: list[bool] = []

    async def claim(store: Store, i: int) -> None:
        won.append(await put_state_if_absent(store, "overdraft", "day:x#0", {"by": i}))

    async with anyio.create_task_group() as tg:
        for i, store in enumerate(stores * 4):
            tg.start_soon(claim, store, i)
    return won


def test_r3_5_a_claim_in_memory_and_in_one_sqlite_file_is_won_once(tmp_path: Path) -> None:
    async def main() -> tuple[list[bool], list[bool], dict[str, object] | None]:
        memory = await _claims([MemoryStore()])
        a, b = SqliteStore(tmp_path / "v.db"), SqliteStore(tmp_path / "v.db")
        await a.open()
        await b.open()
        try:
            won = await _claims([a, b])
            return memory, won, await b.get_state("overdraft", "day:x#0")
        finally:
            await a.aclose()
            await b.aclose()

    memory, sqlite, kept = run_virtual(main)
    assert sorted(memory) == [False] * 3 + [True]
    assert sorted(sqlite) == [False] * 7 + [True]
    assert kept is not None and set(kept) == {"by"}  # the winner's record, not overwritten


def test_r3_5_a_claim_on_redis_is_won_once_by_concurrent_clients(
        tmp_path: Path, redis_ns: str) -> None:
    async def main() -> list[bool]:
        stores: list[Store] = [RedisStore(REDIS_URL, namespace=redis_ns,
                                          spool_path=tmp_path / f"spool{i}") for i in range(3)]
        for s in stores:
            await s.open()
        try:
            return await _claims(stores)
        finally:
            for s in stores:
                await s.aclose()

    assert sorted(run_real(main)) == [False] * 11 + [True]


# -- two replicas on one SQLite file -------------------------------------------------


def test_r3_5_two_replicas_on_one_sqlite_file_take_one_day_grace(tmp_path: Path) -> None:
    """R3.5: both replicas loaded the day before either overdrew; the second is denied,
    naming who took the grace, and a restarted replica is denied too."""
    db = tmp_path / "vibe.db"

    async def main() -> list[str]:
        a, b = await _two_replicas_near_the_limit(db)
        try:
            out = [await _overdraw(a, 600), await _overdraw(b, 600)]
        finally:
            await a.store.aclose()
            await b.store.aclose()
        c = await _replica(SqliteStore(db), "c")  # a restart: a new process, a new session
        try:
            out.append(await _overdraw(c, 600))
            out.append(str((await c.store.totals(DAY_SCOPE)).tokens))
        finally:
            await c.store.aclose()
        return out

    granted, second, restarted, day_total = run_virtual(main)
    assert granted == "granted"
    assert "already used" in second and "t-a" in second and "session a" in second
    assert "already used" in restarted
    assert int(day_total) == LIMIT - 100 + 600  # one overdraft charged, no more


def test_r3_5_budget_added_on_one_replica_repays_and_opens_one_next_period_for_all(
        tmp_path: Path) -> None:
    """R3.5: budget added on one replica repays the day's overdraft another took and
    ends the period; after that every replica may take the grace of the new period --
    one of them, once."""
    db = tmp_path / "vibe.db"

    async def main() -> list[str]:
        a, b = await _two_replicas_near_the_limit(db)
        try:
            out = [await _overdraw(a, 600)]  # the day's grace of the first period
            # a person added 5,000 on b: it repays a's overdraft, the day's debt …
            out.append(str(await b.ledger.repay(DAY_SCOPE, 5_000, 0.0)))
            for h in (a, b):  # … which both replicas' limits now have
                h.tracker.raise_limits(h.tracker.day_scope(), Limits(tokens=5_000))
            out.append(await _overdraw(b, 5_500))  # b knew the day at 9,900: 400 over
            out.append(await _overdraw(a, 5_000))  # a knows 10,500: 500 over, same period
        finally:
            await a.store.aclose()
            await b.store.aclose()
        return out

    first, repaid, second, third = run_virtual(main)
    assert (first, repaid, second) == ("granted", "(500, 0.0)", "granted")  # 500 over
    assert "already used" in third and "session b" in third


# -- replicas on Redis ---------------------------------------------------------------


def _redis(tmp_path: Path, ns: str) -> Callable[[str], RedisStore]:
    return lambda name: RedisStore(REDIS_URL, namespace=ns, spool_path=tmp_path / name)


def test_r3_5_replicas_on_redis_overdrawing_at_once_take_one_grace(
        tmp_path: Path, redis_ns: str) -> None:
    """R3.5: four replicas cross the shared day limit at the same moment: one overdraft
    is granted in total, the day ends within limit + one grace, and a restarted
    replica finds the grace used."""
    make = _redis(tmp_path, redis_ns)

    async def main() -> tuple[list[str], int, str]:
        first = make("first")
        await first.open()
        await _spend_day(first, LIMIT - 100)
        replicas = [await _replica(make(f"r{i}"), f"r{i}") for i in range(4)]
        out: list[str] = []

        async def overdraw(h: Harness) -> None:
            out.append(await _overdraw(h, 600))

        async with anyio.create_task_group() as tg:
            for h in replicas:
                tg.start_soon(overdraw, h)
        day = (await first.totals(DAY_SCOPE)).tokens
        restarted = await _replica(make("again"), "again")
        again = await _overdraw(restarted, 600)
        for s in (first, restarted.store, *(h.store for h in replicas)):
            await s.aclose()
        return out, day, again

    out, day, again = run_real(main)
    assert out.count("granted") == 1, out
    assert all("already used" in r for r in out if r != "granted"), out
    assert day == LIMIT - 100 + 600 <= LIMIT + GRACE
    assert "already used" in again


def test_r3_5_an_overdrafts_reservation_is_held_where_other_replicas_see_it(
        tmp_path: Path, redis_ns: str) -> None:
    """R3.5 on Redis: while an overdraft's call is in flight its estimate is held on the
    shared day scope, so another replica's call that fits only without it is refused."""
    make = _redis(tmp_path, redis_ns)

    async def main() -> None:
        first = make("first")
        await first.open()
        await _spend_day(first, LIMIT - 1_000)
        a, b = await _replica(make("a"), "a"), await _replica(make("b"), "b")
        try:
            async with a.controller.open_critical("t-a", "file_write"):
                res = await a.controller.reserve("t-a", model="sonnet", tokens=1_500,
                                                 cost_usd=0.0)  # 500 over: the grace
                assert res.hold is not None
                with pytest.raises(BudgetExceededError):
                    await b.tracker.reserve_shared("t-b", model="sonnet", tokens=800,
                                                   cost_usd=0.0)
                await a.tracker.release(res)
            await b.tracker.release(await b.tracker.reserve_shared(
                "t-b", model="sonnet", tokens=800, cost_usd=0.0))  # fits once released
        finally:
            for s in (first, a.store, b.store):
                await s.aclose()

    run_real(main)


# -- two orchestrators: the runtime path ---------------------------------------------


class _Writer:
    """Writes a file whose content a model call produces: the call crosses the day limit
    inside the critical section, so it may use the grace."""

    async def run(self, ctx: AgentContext) -> str:
        async with ctx.critical("file_write"):
            text = await ctx.llm.complete([{"role": "user", "content": "write it"}],
                                          max_tokens=200)
            await ctx.files.write("out.txt", str(text))
        return "ok"


def test_r3_5_two_orchestrators_on_one_sqlite_file_overdraw_the_day_once(
        tmp_path: Path) -> None:
    """R3.5: two orchestrators (own state directories, one store file) each cross the
    shared day limit inside a file write at the same time: one overdraft is granted in
    total; the other task is denied, naming who has the grace, and pauses."""
    db = tmp_path / "shared.db"

    async def main() -> list[Event]:
        store = SqliteStore(db)
        await store.open()
        await store.record(UsageEvent(  # earlier runs spent 1,900 of the day's 2,000
            event_id="earlier", task_id="e", session_id="earlier", day=FRIDAY.isoformat(),
            at=0.0, model="sonnet", usage=Usage(prompt_tokens=1_900)))
        await store.aclose()
        orchs = [build_orchestrator({"w": _Writer}, config=VibeConfig(
            state_dir=tmp_path / name, store=f"sqlite:///{db}", session_id=name,
            budgets={"session": {}, "day": {"tokens": 2_000}, "weekend_day_cost_usd": None},
            alerts={"decision_timeout_s": 5.0},
        ), provider=ScriptedProvider(latency_s=0.1, prompt=900, completion=0))
            for name in ("one", "two")]
        async with anyio.create_task_group() as tg:
            for i, orch in enumerate(orchs):
                tg.start_soon(orch.run, [TaskSpec(id=f"w{i}", agent="w", prompt="x")])
        return [e for o in orchs for e in o.bus.history if e.name.startswith("overdraft_")]

    events = run_virtual(main)
    assert sorted(e.name for e in events) == ["overdraft_denied", "overdraft_granted"]
    denied = next(e for e in events if e.name == "overdraft_denied")
    assert "already used" in denied.message
