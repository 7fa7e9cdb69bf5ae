"""Allocator pools and leases (R5.3–R5.5) on a virtual clock."""

from __future__ import annotations

import collections
import dataclasses

import anyio
import anyio.lowlevel
import pytest

from policies.fairness import Fifo, PriorityWithFairness
from scheduler.allocator import Allocator, AllocatorStatistics, Lease, open_allocator
from scheduler.allocator._leases import new_lease_id
from scheduler.config import VibeConfig, load_policies
from scheduler.core import (
    AllocationError,
    ConfigError,
    EventBus,
    LeaseError,
    RateLimitInfo,
    WouldBlockError,
)
from tests._allocator_helpers import pool_config


async def test_r5_4_lease_expires_after_5_minutes_and_returns_capacity() -> None:
    bus = EventBus(anyio.current_time)
    async with open_allocator(pool_config(concurrent=1, tpm=1000), events=bus) as alloc:
        lease = await alloc.acquire("hung", tokens=400)
        assert lease.expires_at - lease.granted_at == pytest.approx(300.0)
        start = anyio.current_time()
        waiter = await_later(alloc, "next", 100)
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter.run)
        # The hung holder never settles: the waiter is served exactly at expiry.
        assert waiter.granted_at is not None
        assert waiter.granted_at - start == pytest.approx(300.0)
        stats = alloc.statistics().pools["p"]
        assert stats.expired == 1
        assert [e.name for e in bus.history] == ["lease_expired"]
        with pytest.raises(LeaseError):
            alloc.settle(lease.id, 10)


class await_later:
    """Acquire in a task and remember when the grant came."""

    def __init__(self, alloc: Allocator, holder: str, tokens: int) -> None:
        self.alloc, self.holder, self.tokens = alloc, holder, tokens
        self.granted_at: float | None = None

    async def run(self) -> None:
        lease = await self.alloc.acquire(self.holder, tokens=self.tokens)
        self.granted_at = anyio.current_time()
        self.alloc.settle(lease.id, self.tokens)


async def test_r5_4_renewal_postpones_expiry() -> None:
    async with open_allocator(pool_config(concurrent=1)) as alloc:
        lease = await alloc.acquire("a")
        await anyio.sleep(200)
        new_expiry = alloc.renew(lease.id, holder="a")
        assert new_expiry == pytest.approx(anyio.current_time() + 300)
        await anyio.sleep(200)  # 400 s after the grant: still held thanks to renewal
        assert lease.active
        with pytest.raises(WouldBlockError):
            alloc.acquire_nowait("b")
        await anyio.sleep(101)
        assert not lease.active
        alloc.acquire_nowait("b")


async def test_r5_4_settle_returns_unused_tokens_to_the_bucket() -> None:
    async with open_allocator(pool_config(concurrent=None, tpm=12_000)) as alloc:
        lease = await alloc.acquire("a", tokens=5000)
        assert alloc.statistics().pools["p"].tokens_available == pytest.approx(7000)
        assert alloc.settle(lease.id, 1200, output_tokens=200) == 3800
        assert alloc.statistics().pools["p"].tokens_available == pytest.approx(10_800)
        with pytest.raises(LeaseError):
            alloc.settle(lease.id, 1)  # a settled lease is gone


async def test_r5_4_only_the_holder_can_renew_settle_or_release() -> None:
    async with open_allocator(pool_config()) as alloc:
        lease = await alloc.acquire("owner", tokens=10)
        for op in (
            lambda: alloc.renew(lease.id, holder="thief"),
            lambda: alloc.settle(lease.id, 1, holder="thief"),
            lambda: alloc.release(lease.id, holder="thief"),
            lambda: alloc.release("not-a-lease-id"),
            lambda: alloc.settle(lease.id[:-1], 1),
        ):
            with pytest.raises(LeaseError):
                op()
        assert lease.active
        alloc.release(lease.id, holder="owner")
        assert not lease.active


async def test_r5_4_a_grant_sets_every_lease_field() -> None:
    """R5.4: the hot path builds a Lease without its __init__; every field is set."""
    async with open_allocator(pool_config(concurrent=2)) as alloc:
        lease = await alloc.acquire("a", tokens=7)
        values = {f.name: getattr(lease, f.name) for f in dataclasses.fields(Lease)}
        assert values["tokens"] == values["requested_tokens"] == 7 and values["active"]
        assert (lease.holder, lease.pool) == ("a", "p")
        assert "holder='a'" in repr(lease)


def test_r5_4_lease_ids_are_unguessable() -> None:
    ids = {new_lease_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == 32 for i in ids)
    # 128 random bits: every hex digit shows up, each about equally often.
    counts = collections.Counter("".join(ids))
    assert set(counts) == set("0123456789abcdef")
    assert max(counts.values()) < 1.1 * min(counts.values())


async def test_r5_5_tokens_per_minute_refill_wakes_the_waiter() -> None:
    async with open_allocator(pool_config(concurrent=None, tpm=600)) as alloc:
        first = await alloc.acquire("a", tokens=300)
        alloc.settle(first.id, 300)
        start = anyio.current_time()
        lease = await alloc.acquire("b", tokens=300)  # 300 left: granted at once
        assert anyio.current_time() == start
        alloc.settle(lease.id, 300)
        lease = await alloc.acquire("c", tokens=300)  # empty: 300 tokens refill in 30 s
        assert anyio.current_time() - start == pytest.approx(30.0)
        alloc.settle(lease.id, 300)


async def test_r5_5_requests_per_minute_limit() -> None:
    async with open_allocator(pool_config(concurrent=None, rpm=2)) as alloc:
        start = anyio.current_time()
        for _ in range(3):
            lease = await alloc.acquire("a")
            alloc.settle(lease.id, 0)
        # The third call waits for one request to refill: 30 s at 2 per minute.
        assert anyio.current_time() - start == pytest.approx(30.0)


async def test_r5_5_request_above_max_share_is_granted_the_max_share() -> None:
    async with open_allocator(pool_config(concurrent=4, tpm=10_000)) as alloc:
        lease = await alloc.acquire("big", tokens=9000, calls=3)
        assert (lease.tokens, lease.calls, lease.requested_tokens) == (5000, 2, 9000)
        alloc.settle(lease.id, 5000)


async def test_r5_3_no_holder_above_max_share_while_others_wait() -> None:
    async with open_allocator(pool_config(concurrent=4)) as alloc:
        greedy = [await alloc.acquire("greedy") for _ in range(3)]  # nobody waits yet
        other = await alloc.acquire("other")
        order: list[str] = []

        async def ask(holder: str) -> None:
            lease = await alloc.acquire(holder)
            order.append(holder)
            alloc.settle(lease.id, 0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "greedy")
            await anyio.sleep(1)
            tg.start_soon(ask, "third")
            await anyio.sleep(1)
            stats = alloc.statistics()
            assert [w.over_share for w in stats.waiting("greedy")] == [True]
            # A slot frees up: "third" gets it although "greedy" asked first,
            # because greedy holds 3 of 4 slots (max share 2) while others wait.
            # Once third is done nobody else waits, and greedy gets the slot.
            alloc.settle(other.id, 0)
            await anyio.sleep(1)
            assert order == ["third", "greedy"]
            for lease in greedy:
                alloc.settle(lease.id, 0)


async def test_r5_5_queue_position_and_estimated_wait() -> None:
    async with open_allocator(pool_config(concurrent=2)) as alloc:
        # Establish an average hold of 10 s.
        held = [await alloc.acquire(f"h{i}") for i in range(2)]
        await anyio.sleep(10)
        for lease in held:
            alloc.settle(lease.id, 0)
        held = [await alloc.acquire(f"h{i}") for i in range(2)]
        async with anyio.create_task_group() as tg:
            for name in ("w1", "w2", "w3"):
                tg.start_soon(_acquire_and_settle, alloc, name)
                await anyio.sleep(0.001)
            stats = alloc.statistics()
            positions = {w.holder: w.position for w in stats.waiters}
            assert positions == {"w1": 1, "w2": 2, "w3": 3}
            ordered = sorted(stats.waiters, key=lambda w: w.position)
            waits = [w.estimated_wait_s for w in ordered]
            # 2 slots held 10 s on average: one slot frees every 5 s.
            assert waits == pytest.approx([5.0, 10.0, 15.0])
            assert stats.pools["p"].waiting == 3
            for lease in held:
                alloc.settle(lease.id, 0)


async def _acquire_and_settle(alloc: Allocator, holder: str) -> None:
    lease = await alloc.acquire(holder)
    alloc.settle(lease.id, 0)


async def test_r5_5_cancelled_waiter_leaks_nothing() -> None:
    async with open_allocator(pool_config(concurrent=1)) as alloc:
        lease = await alloc.acquire("a")
        with anyio.move_on_after(5):
            await alloc.acquire("b")
        stats = alloc.statistics()
        assert stats.waiters == () and stats.pools["p"].calls_in_use == 1
        alloc.settle(lease.id, 0)
        assert alloc.statistics().pools["p"].calls_in_use == 0
        alloc.acquire_nowait("c")


async def test_r5_5_cancelled_after_grant_gives_the_lease_back() -> None:
    async with open_allocator(pool_config(concurrent=1)) as alloc:
        lease = await alloc.acquire("a")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_acquire_and_settle, alloc, "b")
            await anyio.sleep(1)
            # Grant to b and cancel b before it runs again.
            alloc.settle(lease.id, 0)
            tg.cancel_scope.cancel()
        stats = alloc.statistics()
        assert stats.leases == 0 and stats.pools["p"].calls_in_use == 0


async def test_r5_4_cancelled_holder_in_open_lease_releases() -> None:
    async with open_allocator(pool_config(concurrent=1, tpm=1000)) as alloc:
        with anyio.move_on_after(1):
            async with alloc.open_lease("a", tokens=500):
                await anyio.sleep(10)
        stats = alloc.statistics().pools["p"]
        assert stats.calls_in_use == 0 and stats.tokens_available == pytest.approx(1000)


async def test_r5_7_release_holder_frees_leases_and_withdraws_waits() -> None:
    async with open_allocator(pool_config(concurrent=2)) as alloc:
        await alloc.acquire("victim")
        await alloc.acquire("victim")
        errors: list[Exception] = []

        async def wait_more() -> None:
            try:
                await alloc.acquire("victim")
            except LeaseError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_more)
            await anyio.sleep(1)
            assert alloc.release_holder("victim") == 2
        assert len(errors) == 1
        assert alloc.statistics().pools["p"].calls_in_use == 0


async def test_r5_3_set_capacity_at_run_time_wakes_waiters() -> None:
    async with open_allocator(pool_config(concurrent=1)) as alloc:
        await alloc.acquire("a")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_acquire_and_settle, alloc, "b")
            await anyio.sleep(1)
            assert len(alloc.statistics().waiters) == 1
            alloc.set_capacity("p", concurrent=2)
            await anyio.lowlevel.checkpoint()
        assert alloc.statistics().pools["p"].concurrent == 2
        with pytest.raises(AllocationError):
            alloc.set_capacity("p", concurrent=0)


async def test_acquire_validates_pool_and_amounts() -> None:
    alloc = Allocator(pool_config())
    with pytest.raises(AllocationError):
        await alloc.acquire("a", pool="nope")
    with pytest.raises(AllocationError):
        await alloc.acquire("a", tokens=-1)
    with pytest.raises(AllocationError):
        alloc.register("a", "urgent")  # type: ignore[arg-type]


@pytest.mark.real_asyncio  # asyncio's own parking (its futures) is under test
async def test_r5_5_cancellation_leaks_nothing_on_asyncio() -> None:
    """R5.5 on asyncio, where waiters park on a bare loop future: cancel a waiter,
    and cancel a task right after its grant; nothing leaks, nobody is left waiting."""
    alloc = Allocator(pool_config(concurrent=1))
    lease = await alloc.acquire("a")
    granted: list[str] = []

    async def wait(holder: str, scope: anyio.CancelScope) -> None:
        with scope:
            got = await alloc.acquire(holder)
            granted.append(holder)
            alloc.settle(got.id, 0)

    scopes = [anyio.CancelScope() for _ in range(3)]
    async with anyio.create_task_group() as tg:
        for i, scope in enumerate(scopes):
            tg.start_soon(wait, f"w{i}", scope)
        await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()  # cancelled while waiting
        await anyio.wait_all_tasks_blocked()
        alloc.settle(lease.id, 0)  # grants w1 ...
        scopes[1].cancel()  # ... and is cancelled before or right after it runs
    assert "w0" not in granted and "w2" in granted
    stats = alloc.statistics()
    assert stats.leases == 0 and stats.waiters == ()
    assert stats.pools["p"].calls_in_use == 0


@pytest.mark.real_asyncio  # asyncio's own parking (its futures) is under test
async def test_r5_5_grant_to_a_waiter_cancelled_in_the_same_tick_comes_back() -> None:
    """R5.5 on asyncio: a waiter's task is cancelled (its future with it), and before
    the task runs again the freed slot is granted to it; the grant comes back when
    the task unwinds, and the next request gets the slot."""
    alloc = Allocator(pool_config(concurrent=1))
    lease = await alloc.acquire("a")
    scope = anyio.CancelScope()
    got: list[object] = []

    async def wait() -> None:
        with scope:
            got.append(await alloc.acquire("b"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()  # b's future is cancelled now; its task has not run yet
        alloc.settle(lease.id, 0)  # the slot goes to b, whose future is already done
    assert got == []
    stats = alloc.statistics()
    assert stats.leases == 0 and stats.pools["p"].calls_in_use == 0
    again = alloc.acquire_nowait("c")
    alloc.settle(again.id, 0)


async def test_r5_5_a_shrunk_capacity_cuts_waiting_requests_to_the_new_max_share() -> None:
    """R5.5: a request waits while the pool's capacity shrinks below twice its size;
    it is granted the new max share instead of waiting for tokens that can never be
    there."""
    async with open_allocator(pool_config(concurrent=None, tpm=10_000)) as alloc:
        held = [await alloc.acquire(h, tokens=5_000) for h in ("a", "c")]  # bucket empty
        got: list[Lease] = []

        async def wait() -> None:
            got.append(await alloc.acquire("b", tokens=4_000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            alloc.set_capacity("p", tokens_per_minute=2_000)  # max share now 1 000
            for lease in held:
                alloc.settle(lease.id, lease.tokens)
        (lease,) = got
        assert (lease.tokens, lease.requested_tokens) == (1_000, 4_000)


async def test_r5_4_capacities_learned_from_rate_limit_headers() -> None:
    alloc = Allocator(pool_config(concurrent=2, tpm=1000, rpm=10))
    alloc.update_from_rate_limits("p", RateLimitInfo(tokens_limit=80_000, requests_limit=50))
    stats = alloc.statistics().pools["p"]
    assert (stats.tokens_per_minute, stats.requests_per_minute, stats.concurrent) == (
        80_000, 50, 2)
    assert stats.max_share_tokens == 40_000
    alloc.set_capacity("other", concurrent=3)  # a new pool learned at run time
    lease = await alloc.acquire("a", pool="other")
    assert lease.pool == "other"


def test_r7_4_allocation_policy_named_in_config() -> None:
    """R7.4: ``policies.allocation`` names the policy; it gets the ``allocator`` keys."""

    def named(name: str) -> object:
        config = VibeConfig(allocator=pool_config(aging_after_s=5.0),
                            policies={"allocation": name})
        return load_policies(config).allocation

    assert isinstance(named("fifo"), Fifo)
    full = named("policies.fairness:PriorityWithFairness")
    assert isinstance(full, PriorityWithFairness) and full.params.aging_after_s == 5.0
    with pytest.raises(ConfigError, match=r"policies\.allocation"):
        named("no_such_policy")


def test_refill_short_by_a_rounding_error_waits_a_little_not_zero() -> None:
    """A bucket level short of a request by a float rounding error (1010.9999… of 1011)
    schedules the refill strictly after now; at "now" the servicing task would wake at
    the same virtual instant forever (seen with a global slice after a closed pool)."""
    from scheduler.allocator._pools import Pool
    from scheduler.config import PoolConfig

    p = Pool("p", PoolConfig(tokens_per_minute=60_000), max_share=0.5, quantum=100,
             level_quantum=100)
    assert p.tpm is not None
    p.tpm.level, p.tpm.last = 1011 - 1e-13, 2.021
    at = p.refill_time(1011, 1, 2.021)
    assert at is not None and at > 2.021


class _CountingAllocator(Allocator):
    """Notes when the whole queue is ordered (``statistics``)."""

    asked: list[float] = []

    def statistics(self) -> AllocatorStatistics:
        self.asked.append(anyio.current_time())
        return super().statistics()


async def test_r5_5_long_waits_are_found_without_ordering_the_queue() -> None:
    """R5.5: ``longest_wait_s`` is the longest wait of any queued request; the long-wait
    reporter asks it every 5 s and orders the whole queue (``statistics``) only once a
    request has waited 30 s, then logs ``lease_wait_long`` for it once."""
    from scheduler.runtime._waits import long_wait_reporter

    bus = EventBus(anyio.current_time)
    alloc = _CountingAllocator(pool_config(concurrent=1))
    alloc.asked = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(alloc.run)
        assert alloc.longest_wait_s() == 0.0
        lease = await alloc.acquire("hog")
        tg.start_soon(long_wait_reporter(alloc, bus))
        tg.start_soon(_acquire_and_settle, alloc, "w")
        await anyio.sleep(12)
        assert alloc.longest_wait_s() == pytest.approx(12)
        assert alloc.asked == []  # the checks at 5 and 10 s ordered nothing
        await anyio.sleep(24)  # the checks at 30 and 35 s order the queue; one log
        alloc.settle(lease.id, 0)
        await anyio.sleep(10)
        tg.cancel_scope.cancel()
    assert len(alloc.asked) == 2  # none once the wait ended
    assert [e.task_id for e in bus.history if e.name == "lease_wait_long"] == ["w"]


async def test_r5_4_a_closed_pool_reopening_is_not_credited_the_time_it_was_closed() -> None:
    """R5.4: a pool closed (a global slice of 0) for 30 s and reopened at 60,000 tokens a
    minute starts from the level it had, not with 30 s of refill at the new rate (the
    bucket is refilled to the change at its old rate first)."""
    alloc = Allocator(pool_config(tpm=60_000))
    lease = await alloc.acquire("a", tokens=60_000)  # the bucket is empty
    alloc.settle(lease.id, 60_000)
    alloc.set_capacity("p", tokens_per_minute=0)
    await anyio.sleep(30)
    alloc.set_capacity("p", tokens_per_minute=60_000)
    available = alloc.statistics().pools["p"].tokens_available
    assert available is not None and available < 1_000, available
