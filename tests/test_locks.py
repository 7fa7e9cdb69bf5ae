"""The lock manager: modes, fairness, cancellation, and its wait-for edges (R5.6)."""

from __future__ import annotations

import anyio
import pytest

from scheduler.core import WouldBlockError
from scheduler.deadlock import LockManager, TaskLocks, WaitForGraph


def _mgr() -> tuple[LockManager, WaitForGraph]:
    graph = WaitForGraph()
    return LockManager(graph), graph


async def test_r5_6_shared_holders_coexist_exclusive_waits_with_edges() -> None:
    """R5.6: readers share; a writer waits with an edge to every reader, then gets it."""
    locks, graph = _mgr()
    r1 = locks.acquire_nowait("r1", "db", exclusive=False)
    r2 = locks.acquire_nowait("r2", "db", exclusive=False)
    got: list[str] = []

    async def writer() -> None:
        async with locks.open_lock("w", "db"):
            got.append("w")

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await anyio.sleep(1)
        assert graph.who_waits_for_whom() == [("w", "r1"), ("w", "r2")]
        assert graph.is_blocking("r1") and not graph.is_blocking("w")
        locks.release(r1)
        await anyio.sleep(1)
        assert graph.who_waits_for_whom() == [("w", "r2")]
        locks.release(r2)
    assert got == ["w"]
    assert graph.who_waits_for_whom() == []
    assert locks.statistics().resources_held == 0


async def test_r5_6_writer_not_starved_by_later_readers() -> None:
    """R5.6: a reader arriving after a queued writer queues behind it (and waits for it)."""
    locks, graph = _mgr()
    first = locks.acquire_nowait("r1", "f", exclusive=False)
    order: list[str] = []

    async def take(holder: str, exclusive: bool) -> None:
        async with locks.open_lock(holder, "f", exclusive=exclusive):
            order.append(holder)
            await anyio.sleep(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "w", True)
        await anyio.sleep(0.1)
        tg.start_soon(take, "r2", False)
        await anyio.sleep(0.1)
        assert ("r2", "w") in graph.who_waits_for_whom()
        with pytest.raises(WouldBlockError):
            locks.acquire_nowait("r3", "f", exclusive=False)
        locks.release(first)
    assert order == ["w", "r2"]


async def test_r5_6_cancelled_waiter_leaves_no_edge_and_no_lock() -> None:
    """R5.6: cancelling a waiter removes its edge and its place in the queue."""
    locks, graph = _mgr()
    token = locks.acquire_nowait("h", "x")
    with anyio.move_on_after(5):
        await locks.acquire("w", "x")
    assert graph.who_waits_for_whom() == []
    assert locks.statistics().waiters == 0
    locks.release(token)
    assert locks.held_by("w") == [] and locks.statistics().resources_held == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])  # both, in real time
async def test_r5_6_grant_racing_cancellation_is_released() -> None:
    """R5.6: a waiter granted and cancelled in the same tick does not keep the lock.

    Either the grant wins and ``open_lock`` releases the lock as the
    cancellation unwinds it, or the wait raises and the manager gives it back.
    """
    locks, graph = _mgr()
    token = locks.acquire_nowait("h", "x")
    async with anyio.create_task_group() as tg:
        async def waiter() -> None:
            async with locks.open_lock("w", "x"):
                await anyio.sleep_forever()

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        locks.release(token)   # grants w ...
        tg.cancel_scope.cancel()  # ... which is cancelled before it runs
    assert locks.held_by("w") == []
    assert locks.statistics().resources_held == 0
    assert graph.who_waits_for_whom() == []


async def test_r5_7_release_all_frees_every_lock_and_wakes_waiters() -> None:
    """R5.7: release_all returns the names and hands them to the waiters."""
    locks, graph = _mgr()
    locks.acquire_nowait("v", "a")
    locks.acquire_nowait("v", "b", exclusive=False)
    locks.acquire_nowait("v", "a")  # re-entrant
    got: list[str] = []

    async def take(name: str) -> None:
        token = await locks.acquire("o", name)
        got.append(name)
        locks.release(token)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "a")
        tg.start_soon(take, "b")
        await anyio.sleep(1)
        assert graph.waits_of("o") == ["v"]
        assert locks.release_all("v") == ["a", "b"]
    assert sorted(got) == ["a", "b"]
    assert locks.release_all("v") == []
    assert locks.statistics().resources_held == 0


async def test_r5_6_reentrant_acquire_does_not_queue_behind_own_waiters() -> None:
    """R5.6: a holder re-taking its lock while others queue is granted, with no self-cycle."""
    locks, graph = _mgr()
    mine = TaskLocks(locks, "h")
    outer = await mine.acquire("x")
    async with anyio.create_task_group() as tg:
        tg.start_soon(locks.acquire, "w", "x")
        await anyio.sleep(1)
        inner = await mine.acquire("x")
        assert graph.who_waits_for_whom() == [("w", "h")]
        mine.release(inner)
        assert mine.held() == ["x"]
        mine.release(outer)
    assert locks.held_by("w") == ["x"]


def test_r5_6_release_is_idempotent() -> None:
    """R5.6: releasing a token twice does not release someone else's lock."""
    locks, _ = _mgr()
    t1 = locks.acquire_nowait("a", "x", exclusive=False)
    t2 = locks.acquire_nowait("b", "x", exclusive=False)
    locks.release(t1)
    locks.release(t1)
    assert locks.holders_of("x") == ["b"]
    locks.release(t2)
    assert locks.holders_of("x") == []
