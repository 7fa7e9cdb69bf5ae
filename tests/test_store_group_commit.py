"""Group commit of the SQLite ledger (#22; R2.1 recording usage, R2.6 persistence).

Concurrent writes share one transaction, and each caller is acknowledged only once
its own write is committed: an acknowledged charge survives SIGKILL, a write that
fails fails only its own caller, and a caller cancelled while its write still
waits in the queue gets neither a write nor an acknowledgement.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from scheduler import TaskSpec, Usage, UsageEvent
from scheduler.core import StoreError
from scheduler.runtime import AgentContext
from scheduler.store import SqliteStore
from scheduler.tasks import TaskStatus
from scheduler.testing import ScriptedProvider, run_real
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
DAY = "2026-11-27"


def _event(n: int, task: str = "t") -> UsageEvent:
    return UsageEvent(event_id=f"e{n}", task_id=task, session_id="s", day=DAY, at=float(n),
                      model="sonnet", usage=Usage(100, 10), cost_usd=0.001)


WRITERS = textwrap.dedent(
    """
    import sys, anyio
    from scheduler import Usage, UsageEvent
    from scheduler.store import SqliteStore

    async def writer(store, k):
        n = 0
        while True:
            n += 1
            ev = UsageEvent(event_id=f"w{k}-{n}", task_id=f"t{k}", session_id="killed",
                            day="2026-11-27", at=float(n), model="sonnet",
                            usage=Usage(100, 10), cost_usd=0.001)
            await store.record(ev)
            print(ev.event_id, store.group.writes, store.group.batches, flush=True)

    async def main(path):
        store = SqliteStore(path)
        await store.open()
        async with anyio.create_task_group() as tg:
            for k in range(20):
                tg.start_soon(writer, store, k)

    anyio.run(main, sys.argv[1])
    """
)


def test_r2_6_group_committed_charges_acknowledged_before_sigkill_are_all_kept(
    tmp_path: Path,
) -> None:
    """#22, R2.6: 20 writers charge concurrently (their writes share commits); the process
    is SIGKILLed; every charge acknowledged before the kill is in the ledger, and each
    scope's totals are exactly the sum of the events there (rows and totals committed
    together)."""
    db = tmp_path / "vibe.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITERS, str(db)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stdout is not None
    acked: list[str] = []
    writes = batches = 0
    for line in proc.stdout:
        event_id, writes_s, batches_s = line.split()
        acked.append(event_id)
        writes, batches = int(writes_s), int(batches_s)
        if len(acked) >= 600:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert writes > batches  # commits were shared: the test exercises group commit
    run_real(_check_after_kill, db, acked)


async def _check_after_kill(db: Path, acked: list[str]) -> None:
    store = SqliteStore(db)
    await store.open()
    events = await store.events()
    assert set(acked) <= {e.event_id for e in events}
    assert (await store.totals(f"day:{DAY}")).tokens == 110 * len(events)
    for k in range(20):
        mine = [e for e in events if e.task_id == f"t{k}"]
        totals = await store.totals(f"task:t{k}")
        assert (totals.tokens, totals.calls) == (110 * len(mine), len(mine))
    await store.aclose()


@pytest.mark.real_asyncio  # the store's worker thread and a real SQLite file
async def test_r2_1_a_failed_write_fails_only_its_own_caller(tmp_path: Path) -> None:
    """#22, R2.1: among concurrent charges sharing a commit, one the database refuses
    (a constraint fails) raises StoreError in its own caller only; every other charge is
    acknowledged, recorded and counted once."""
    db = tmp_path / "vibe.db"
    store = SqliteStore(db)
    await store.open()
    other = sqlite3.connect(db)
    other.execute("CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.task_id = 'bad' "
                  "BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END")
    other.commit()
    other.close()
    outcomes: dict[int, object] = {}

    async def charge(n: int) -> None:
        try:
            outcomes[n] = await store.record(_event(n, "bad" if n == 7 else f"t{n % 4}"))
        except StoreError as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(charge, n)
    assert store.group.writes > store.group.batches  # the bad write shared a batch
    assert isinstance(outcomes.pop(7), StoreError)
    assert set(outcomes.values()) == {True}
    events = await store.events()
    assert sorted(int(e.event_id[1:]) for e in events) == sorted(outcomes)
    assert (await store.totals(f"day:{DAY}")).calls == 29
    assert await store.record(_event(3, "t3")) is False  # still idempotent afterwards
    await store.aclose()


class ThreeCalls:
    async def run(self, ctx: AgentContext) -> None:
        for _ in range(3):
            await ctx.llm.complete(HI, max_tokens=100, model="haiku")


@pytest.mark.real_asyncio  # the store's worker thread and a real SQLite file
async def test_r2_1_concurrent_agents_share_commits_and_every_call_is_charged(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """#22, R2.1: 40 agents whose calls end together charge through shared commits; every
    call is recorded once, and the ledger's totals match its events."""
    store = SqliteStore(tmp_path / "vibe.db")
    orch = make_orchestrator({"a": ThreeCalls}, store=store,
                             provider=ScriptedProvider(latency_s=0.02))
    report = await orch.run([TaskSpec(id=f"t{i}", agent="a", prompt="x") for i in range(40)])
    assert {o.status for o in report.outcomes.values()} == {TaskStatus.COMPLETED}
    assert store.group.writes > store.group.batches
    check = SqliteStore(tmp_path / "vibe.db")
    await check.open()
    calls = [e for e in await check.events() if e.model]
    assert len(calls) == 120 and len({e.event_id for e in calls}) == 120
    session = await check.totals(f"session:{orch.session_id}")
    assert session.calls == 120
    assert session.tokens == sum(e.usage.total_tokens for e in calls)
    assert session.cost_usd == pytest.approx(sum(e.cost_usd for e in calls))
    await check.aclose()


async def test_r2_1_a_shared_commit_adds_each_amount_in_order_as_a_commit_each_would(
    tmp_path: Path,
) -> None:
    """#22, R2.1: charges committed together add to the scopes they share one at a time,
    in order, from the stored total: the floats a commit per charge would store, to the
    bit (1e16 + 1.0 + 1.0 stays 1e16; an exact or compensated sum would store 1e16 + 2),
    in the cost and in a token count holding a float alike; int counts stay ints."""
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()

    def charge(n: int, amount: float) -> UsageEvent:
        return UsageEvent(event_id=f"f{n}", task_id=f"t{n}", session_id="s", day=DAY,
                          at=float(n), model="sonnet", usage=Usage(amount, 3),  # type: ignore[arg-type]
                          cost_usd=amount)

    await store.record(charge(0, 1e16))
    async with anyio.create_task_group() as tg:  # one loop turn: one shared commit
        for n in (1, 2):
            tg.start_soon(store.record, charge(n, 1.0))
    assert store.group.batches == 2
    for scope in ("session:s", f"day:{DAY}"):
        totals = await store.totals(scope)
        assert totals.cost_usd.hex() == (1e16 + 1.0 + 1.0).hex() == (1e16).hex()
        assert totals.prompt_tokens == 10**16  # (an integral float is an int in SQLite)
        assert totals.completion_tokens == 9 and type(totals.completion_tokens) is int
        assert totals.calls == 3
    await store.aclose()


async def test_r2_6_a_write_cancelled_while_queued_is_neither_written_nor_acknowledged(
    tmp_path: Path,
) -> None:
    """#22, R2.6: while the database is locked the first write retries; a second caller
    queued behind it is cancelled and its event is never written; the first and a third
    write still land once the lock goes."""
    db = tmp_path / "vibe.db"
    store = SqliteStore(db, retry_s=30)
    await store.open()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    done: list[int] = []

    async def charge(n: int) -> None:
        await store.record(_event(n))
        done.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(charge, 1)
        await anyio.sleep(0.1)  # the first write leads and retries
        with anyio.CancelScope() as second:
            second.cancel()  # cancelled before its turn: taken out of the queue
            await charge(2)
        tg.start_soon(charge, 3)
        await anyio.sleep(1)
        other.execute("COMMIT")
    other.close()
    assert sorted(done) == [1, 3]
    assert sorted(e.event_id for e in await store.events()) == ["e1", "e3"]
    assert (await store.totals(f"day:{DAY}")).calls == 2
    await store.aclose()


@pytest.mark.real_asyncio  # the store's worker thread and a real SQLite file
async def test_r2_6_closing_the_store_waits_for_the_commit_under_way(tmp_path: Path) -> None:
    """#22, R2.6: ``aclose`` while concurrent charges are being committed waits for the
    commit in the worker thread; every charge acknowledged is in the ledger, and a charge
    queued after the close is refused with StoreError, never lost silently."""
    db = tmp_path / "vibe.db"
    store = SqliteStore(db)
    await store.open()
    acked: list[str] = []
    refused: list[str] = []

    async def charge(n: int) -> None:
        try:
            await store.record(_event(n, f"t{n % 5}"))
            acked.append(f"e{n}")
        except StoreError:
            refused.append(f"e{n}")

    async with anyio.create_task_group() as tg:
        for n in range(40):
            tg.start_soon(charge, n)
        await anyio.lowlevel.checkpoint()  # every charge queued, the first commit runs
        await store.aclose()
    assert acked and len(acked) + len(refused) == 40
    check = SqliteStore(db)
    await check.open()
    assert sorted(e.event_id for e in await check.events()) == sorted(acked)
    await check.aclose()


@pytest.mark.parametrize("seed", range(40))
async def test_r2_6_writes_cancelled_at_random_never_stall_the_queue(seed: int) -> None:
    """R2.6: 100 writers, a fifth of them cancelled at random moments, small and large
    batches, commits that yield or not: every writer returns, and each acknowledged write
    was committed exactly once."""
    import random

    from scheduler.core import GroupCommit

    rnd = random.Random(seed)
    committed: list[int] = []

    async def commit(batch: list[int]) -> list[int | Exception]:
        if rnd.random() < 0.5:
            await anyio.sleep(rnd.random() * 0.01)
        committed.extend(batch)
        return list(batch)

    group: GroupCommit[int, int] = GroupCommit(
        commit, max_batch=rnd.choice([1, 2, 3, 256]), gather=rnd.random() < 0.5)
    acked: list[int] = []

    async def writer(i: int, tg: anyio.abc.TaskGroup) -> None:
        await anyio.sleep(rnd.random() * 0.02)
        with anyio.CancelScope() as scope:
            if rnd.random() < 0.2:
                async def cancel_soon() -> None:
                    await anyio.sleep(rnd.random() * 0.005)
                    scope.cancel()
                tg.start_soon(cancel_soon)
            acked.append(await group.submit(i))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(writer, i, tg)
        await group.wait_idle()
    assert set(acked) <= set(committed) and len(set(committed)) == len(committed)


@pytest.mark.real_asyncio  # there a waiting write parks on a future of the loop
@pytest.mark.parametrize("seed", range(10))
async def test_r2_6_writes_cancelled_at_random_never_stall_the_queue_on_asyncio(
    seed: int,
) -> None:
    """R2.6: the same on asyncio, where waiting writes park on loop futures."""
    await test_r2_6_writes_cancelled_at_random_never_stall_the_queue(seed)


async def test_r2_6_state_writes_of_one_commit_land_in_order(tmp_path: Path) -> None:
    """R2.6 (#22): a commit writes its neighbouring state records with one statement;
    writes, deletions and charges of one batch still land in the order they were made --
    the last write of a key wins, a deletion between two writes of it does not win."""
    from scheduler.store._spool import Entry, SpooledEvent, SpooledState
    from scheduler.store._sqlite_sql import apply

    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        entries: list[Entry] = [
            SpooledState("task", "a", {"v": 1}), SpooledState("task", "b", {"v": 1}),
            SpooledState("task", "a", None), SpooledState("task", "c", {"v": 1}),
            SpooledEvent(_event(1)), SpooledState("task", "c", {"v": 2}),
            SpooledState("task", "b", None), SpooledState("task", "b", {"v": 3}),
            SpooledState("task", "d", {"v": 1}), SpooledState("task", "d", None)]
        assert apply(store._conn, entries) == [None] * 4 + [True] + [None] * 5
        assert await store.list_state("task") == {"b": {"v": 3}, "c": {"v": 2}}
        assert (await store.totals("task:t")).calls == 1
    finally:
        await store.aclose()
