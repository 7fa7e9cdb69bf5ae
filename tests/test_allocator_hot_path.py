"""The allocator's hot path (#22): what a settle that hands its slot to a waiter runs, and
that the dispatch loop's inline grant makes the same lease and charges as ``Grants.grant``
(R5.4)."""

from __future__ import annotations

import sys
from collections import Counter
from types import FrameType
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from scheduler.allocator import Lease, open_allocator
from tests._allocator_helpers import pool_config


def _python_calls(into: Counter[str]) -> Any:
    """A profile function counting the Python functions called, by name; the loop's
    ``create_future`` only when the allocator calls it (its servicing task's anyio Event
    makes one when it goes back to sleep)."""

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            name = frame.f_code.co_name
            caller = frame.f_back
            if name != "create_future" or (
                    caller is not None and "allocator" in caller.f_code.co_filename):
                into[name] += 1

    return profile


# the loop future that waiters park on exists on asyncio only
@pytest.mark.real_asyncio
async def test_22_a_settle_hands_its_slot_over_without_the_general_helpers() -> None:
    """#22: on asyncio, a queued request parks on a future made without the loop's Python
    ``create_future``, and a settle that grants the next waiter does it in one pass:
    no ``Grants.end``, ``Dispatcher.select`` or ``Grants.grant`` call in between."""
    async with open_allocator(pool_config(concurrent=1)) as alloc:
        first = await alloc.acquire("a", tokens=100)
        for _ in range(3):  # the servicing task wakes for the first lease's expiry, and waits
            await anyio.lowlevel.checkpoint()
        got: dict[str, Lease] = {}

        async def wait(holder: str) -> None:
            got[holder] = await alloc.acquire(holder, tokens=200)

        queueing: Counter[str] = Counter()
        handing_over: Counter[str] = Counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "b")
            await anyio.wait_all_tasks_blocked()
            sys.setprofile(_python_calls(queueing))
            try:
                tg.start_soon(wait, "c")
                await anyio.wait_all_tasks_blocked()  # "c" queues behind "b"
            finally:
                sys.setprofile(None)
            alloc.settle(first.id, 100)  # to "b" (the first pass also bounds the counters)
            await anyio.wait_all_tasks_blocked()
            sys.setprofile(_python_calls(handing_over))
            try:
                alloc.settle(got["b"].id, 200)  # to "c"
            finally:
                sys.setprofile(None)
        assert queueing["enqueue"] == 1
        assert queueing["create_future"] == 0
        assert handing_over["settle"] == handing_over["dispatch"] == 1
        for helper in ("end", "select", "grant"):
            assert handing_over[helper] == 0, helper
        assert got["c"].holder == "c" and got["c"].tokens == 200


async def test_r5_4_a_queued_grant_makes_the_same_lease_and_charges_as_an_immediate_one(
) -> None:
    """R5.4: a request granted by the dispatch loop (it waited) and one granted at once get
    the same lease (TTL, charge, requested tokens) and move the pool's and the holder's
    counters alike: the loop's inline grant is kept in step with ``Grants.grant``."""
    async with open_allocator(pool_config(concurrent=1)) as at_once, \
            open_allocator(pool_config(concurrent=1)) as queued:
        for alloc in (at_once, queued):
            alloc.register("x", "background")  # the background class's share moves too
            earlier = await alloc.acquire("y", tokens=1)
            alloc.settle(earlier.id, 1)
        blocker = await queued.acquire("y", tokens=1)
        earlier = await at_once.acquire("y", tokens=1)
        at_once.settle(earlier.id, 1)
        leases: list[Lease] = []

        async def wait() -> None:
            leases.append(await queued.acquire("x", tokens=700))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert [w.holder for w in queued.statistics().waiters] == ["x"]
            queued.settle(blocker.id, 1)
        direct = at_once.acquire_nowait("x", tokens=700)
        lease = leases[0]
        for field in ("tokens", "calls", "requested_tokens", "charged", "active", "_ttl",
                      "_deadline"):
            assert getattr(lease, field) == getattr(direct, field), field
        assert lease.expires_at - lease.granted_at == pytest.approx(300.0)
        assert lease.id != direct.id and len(lease.id) == 32
        for p_q, p_d in [(queued._pools["p"], at_once._pools["p"])]:
            assert (p_q.in_use, p_q.grants, p_q.recent_all, p_q.recent_bg) == (
                p_d.in_use, p_d.grants, p_d.recent_all, p_d.recent_bg)
            x_q, x_d = p_q.accounts["x"], p_d.accounts["x"]
            assert (x_q.counter, x_q.held_tokens, x_q.held_calls) == (
                x_d.counter, x_d.held_tokens, x_d.held_calls) == (700.0, 700, 1)
        assert queued.settle(lease.id, 700) == 0
        assert lease.id not in queued._leases


@pytest.mark.real_asyncio
async def test_r5_3_a_grant_under_the_fairness_guard_scans_the_level_heads_once() -> None:
    """R5.3 (#22): when the highest level's head is more than the slack of service ahead,
    a settle hands the slot to the least-served waiter of a lower level after one scan of
    the level heads (``Dispatcher._least``): no ``select`` and no ``BandQueue.low``."""
    async with open_allocator(pool_config(concurrent=1, fairness_slack_tokens=1000)) as alloc:
        alloc.register("crit", "critical_path")
        for _ in range(3):  # crit's service counter runs far ahead while nobody waits
            lease = await alloc.acquire("crit", tokens=2000)
            alloc.settle(lease.id, 2000)
        blocker = await alloc.acquire("x", tokens=100)
        got: dict[str, Lease] = {}

        async def wait(holder: str) -> None:
            got[holder] = await alloc.acquire(holder, tokens=500)

        calls: Counter[str] = Counter()
        async with anyio.create_task_group() as tg:
            for holder in ("norm", "crit"):  # crit queues last, so it is not lifted
                tg.start_soon(wait, holder)
                await anyio.wait_all_tasks_blocked()
            sys.setprofile(_python_calls(calls))
            try:
                alloc.settle(blocker.id, 100)  # to norm: crit is 6,000 ahead
            finally:
                sys.setprofile(None)
            await anyio.wait_all_tasks_blocked()
            assert list(got) == ["norm"]
            alloc.settle(got["norm"].id, 500)  # to crit
        assert list(got) == ["norm", "crit"]
        assert calls["dispatch"] == calls["_least"] == 1
        for helper in ("select", "low"):
            assert calls[helper] == 0, helper
        alloc.settle(got["crit"].id, 500)
