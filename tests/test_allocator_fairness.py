"""Priority-with-fairness inside the allocator (R5.1–R5.3, R5.5) on a virtual clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.fairness import Fifo
from scheduler.allocator import Allocator, open_allocator
from scheduler.testing import run_virtual
from tests._allocator_helpers import pool_config

#: Guards off: pure policy order (no lag bound, no background floor).
NO_GUARDS: dict[str, Any] = {"fairness_slack_tokens": 1e12, "background_min_share": 0.0}


async def _serve(alloc: Allocator, holder: str, trace: list[str], tokens: int = 100,
                 hold: float = 0.0) -> None:
    async with alloc.open_lease(holder, tokens=tokens) as lease:
        trace.append(holder)
        if hold:
            await anyio.sleep(hold)
        alloc.settle(lease.id, tokens)


def _priority_of(alloc: Allocator, holder: str) -> int:
    (w,) = alloc.statistics().waiting(holder)
    return w.effective_priority


async def test_r5_1_higher_class_served_first() -> None:
    trace: list[str] = []
    async with open_allocator(pool_config(concurrent=1, **NO_GUARDS)) as alloc:
        for holder, cls in (("bg", "background"), ("n", "normal"), ("crit", "critical_path"),
                            ("user", "user_waiting")):
            alloc.register(holder, cls)  # type: ignore[arg-type]
        first = await alloc.acquire("occupier")
        async with anyio.create_task_group() as tg:
            for holder in ("bg", "n", "crit", "user"):
                tg.start_soon(_serve, alloc, holder, trace)
                await anyio.sleep(0.001)
            alloc.settle(first.id, 0)
    assert trace == ["crit", "user", "n", "bg"]


async def test_r5_2_aging_after_30s() -> None:
    trace: list[str] = []
    async with open_allocator(pool_config(concurrent=1, **NO_GUARDS)) as alloc:
        alloc.register("bg", "background")
        first = await alloc.acquire("occupier")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, alloc, "bg", trace)
            await anyio.sleep(29.9)
            assert _priority_of(alloc, "bg") == 1
            await anyio.sleep(0.1)
            assert _priority_of(alloc, "bg") == 2  # +1 after 30 s
            await anyio.sleep(30)
            assert _priority_of(alloc, "bg") == 3  # and again after 60 s
            tg.start_soon(_serve, alloc, "normal", trace)
            await anyio.sleep(0.001)
            alloc.settle(first.id, 0)

    # The aged background task (3) now goes before a fresh normal one (2).
    assert trace == ["bg", "normal"]


async def test_r5_2_aging_bounded_to_plus_one_once() -> None:
    """R5.2 as written (``aging_max_steps = 1``): +1 after 30 s waited, and no more."""
    trace: list[str] = []
    async with open_allocator(pool_config(concurrent=1, aging_max_steps=1,
                                          **NO_GUARDS)) as alloc:
        alloc.register("bg", "background")
        alloc.register("crit", "critical_path")
        first = await alloc.acquire("occupier")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, alloc, "bg", trace)
            await anyio.sleep(29.9)
            assert _priority_of(alloc, "bg") == 1
            await anyio.sleep(0.1)
            assert _priority_of(alloc, "bg") == 2  # +1 after 30 s
            await anyio.sleep(200)  # (the occupier's lease lasts 300 s)
            assert _priority_of(alloc, "bg") == 2  # and no more, however long it waits
            tg.start_soon(_serve, alloc, "crit", trace)
            tg.start_soon(_serve, alloc, "normal", trace)
            await anyio.sleep(0.001)
            alloc.settle(first.id, 0)

    # The aged background task (2) goes before a fresh normal one (2, later arrival) but
    # not before a critical one (3).
    assert trace == ["crit", "bg", "normal"]


def test_r5_2_a_request_arriving_behind_others_ages_30s_after_its_own_arrival() -> None:
    """R5.2: the first aging step of a request that arrives while others already wait
    (queued by the allocator's periodic sweep, not per request) comes exactly 30 s
    after that request's arrival: not earlier, not later."""
    async def main(release_at: float) -> list[str]:
        trace: list[str] = []
        async with open_allocator(pool_config(concurrent=1, **NO_GUARDS)) as alloc:
            for holder in ("bg_early", "bg_late"):
                alloc.register(holder, "background")
            first = await alloc.acquire("occupier")
            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve, alloc, "bg_early", trace)
                await anyio.sleep(20)
                tg.start_soon(_serve, alloc, "bg_late", trace)  # 20 s behind bg_early
                await anyio.sleep(release_at - 21)
                tg.start_soon(_serve, alloc, "normal", trace)
                await anyio.sleep(1)
                alloc.settle(first.id, 0)  # at release_at
        return trace

    # bg_late (background, 1) reaches level 2 at 50 s and then goes before the later
    # normal request (2) by arrival; a moment before 50 s it still comes last.
    assert run_virtual(lambda: main(50.01)) == ["bg_early", "bg_late", "normal"]
    assert run_virtual(lambda: main(49.99)) == ["bg_early", "normal", "bg_late"]


async def test_r5_2_demotion_above_half_of_budget() -> None:
    trace: list[str] = []
    async with open_allocator(pool_config(concurrent=1, **NO_GUARDS)) as alloc:
        first = await alloc.acquire("occupier")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, alloc, "spender", trace)
            await anyio.sleep(0.001)
            tg.start_soon(_serve, alloc, "saver", trace)
            await anyio.sleep(0.001)
            alloc.set_token_fraction("spender", 0.5)
            assert _priority_of(alloc, "spender") == 2
            alloc.set_token_fraction("spender", 0.6)  # above 50 %: −1
            assert _priority_of(alloc, "spender") == 1
            alloc.settle(first.id, 0)
    assert trace == ["saver", "spender"]


async def test_r5_2_blocking_boost_to_3() -> None:
    trace: list[str] = []
    async with open_allocator(pool_config(concurrent=1, **NO_GUARDS)) as alloc:
        alloc.register("blocker", "background")
        alloc.register("crit", "critical_path")
        first = await alloc.acquire("occupier")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, alloc, "normal", trace)
            await anyio.sleep(0.001)
            tg.start_soon(_serve, alloc, "blocker", trace)
            await anyio.sleep(0.001)
            tg.start_soon(_serve, alloc, "crit", trace)
            await anyio.sleep(0.001)
            alloc.set_blocking("blocker", True)  # others wait on it: at least 3
            assert _priority_of(alloc, "blocker") == 3
            alloc.settle(first.id, 0)

    # Level 3 ties between blocker and crit go to the earlier request.
    assert trace == ["blocker", "crit", "normal"]


async def test_r5_3_least_service_first_within_a_level_and_idle_credit_is_not_banked() -> None:
    async def main() -> list[str]:
        trace: list[str] = []
        async with open_allocator(pool_config(concurrent=1, **NO_GUARDS)) as alloc:
            for _ in range(5):  # "busy" receives 5 000 tokens of service, "idle" none
                lease = await alloc.acquire("busy", tokens=1000)
                alloc.settle(lease.id, 1000)
            first = await alloc.acquire("occupier")
            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve, alloc, "busy", trace)
                await anyio.sleep(0.001)
                tg.start_soon(_serve, alloc, "fresh", trace)  # lifted to busy's counter
                await anyio.sleep(0.001)
                alloc.settle(first.id, 0)
            # Without lifting "fresh" (counter 0) would have gone first.
            return trace

    assert await main() == ["busy", "fresh"]


def _grant_shares(config_kw: dict[str, Any], classes: dict[str, str], grants: int,
                  tokens: dict[str, int] | None = None) -> Counter[str]:
    """Backlogged holders (three requests each) on a 1-slot pool; count the first grants."""
    async def main() -> Counter[str]:
        trace: list[str] = []
        done = anyio.Event()

        async def loop(alloc: Allocator, holder: str) -> None:
            size = (tokens or {}).get(holder, 1000)
            while len(trace) < grants:
                await _serve(alloc, holder, trace, tokens=size, hold=0.01)
            done.set()

        async with open_allocator(pool_config(concurrent=1, **config_kw)) as alloc:
            for holder, cls in classes.items():
                alloc.register(holder, cls)  # type: ignore[arg-type]
            async with anyio.create_task_group() as tg:
                for holder in classes:
                    for _ in range(3):
                        tg.start_soon(loop, alloc, holder)
                await done.wait()
                tg.cancel_scope.cancel()
            assert alloc.statistics().pools["p"].calls_in_use == 0  # cancellation leaked none
        return Counter(trace[:grants])

    return run_virtual(main)


def test_r5_3_background_class_keeps_10_percent_under_saturation() -> None:
    classes = {f"c{i}": "critical_path" for i in range(9)} | {"bg": "background"}
    guarded = _grant_shares({"fairness_slack_tokens": 1e12}, classes, 300)
    assert guarded["bg"] / 300 >= 0.09
    # Without the floor (background_min_share 0) strict priority starves it for 3 s. (Trio runs
    # newly started tasks in a random order: when the background loop happens to ask first,
    # the free pool grants it at once, since nobody waits yet; after that, nothing.)
    unguarded = _grant_shares(NO_GUARDS, classes, 300)
    assert unguarded["bg"] <= 1


def test_r5_3_min_share_equal_split_and_bounded_lead() -> None:
    """R5.3: priority gives a lead of at most the slack; then backlogged agents split equally."""
    classes = {"crit": "critical_path"} | {f"n{i}": "normal" for i in range(11)}
    shares = _grant_shares({"fairness_slack_tokens": 5000}, classes, 600)
    # 12 compete (> 10): each gets an equal split, give or take the slack's 5 grants.
    assert min(shares.values()) >= 600 // 12 - 6
    assert shares["crit"] <= 600 // 12 + 6
    # Without the lag bound the critical task takes everything.
    assert _grant_shares(NO_GUARDS, classes, 600)["crit"] >= 590


def test_r5_3_vtc_equalises_tokens_not_requests() -> None:
    classes = {"small": "normal", "large": "normal"}
    sizes = {"small": 250, "large": 1000}
    shares = _grant_shares({}, classes, 250, sizes)
    served = {h: shares[h] * sizes[h] for h in classes}
    assert abs(served["small"] - served["large"]) <= 1000 + 250
    # FIFO-like request counting would have served about as many requests each.
    assert shares["small"] > 3 * shares["large"]


async def test_r5_5_large_request_is_not_starved_by_small_ones() -> None:
    trace: list[str] = []
    async with open_allocator(pool_config(concurrent=None, tpm=60_000)) as alloc:
        async def small(holder: str) -> None:
            while "big" not in trace:
                await _serve(alloc, holder, trace, tokens=2000, hold=0.5)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(small, f"s{i}")
            await anyio.sleep(5)
            start = anyio.current_time()
            await _serve(alloc, "big", trace, tokens=30_000)
            waited = anyio.current_time() - start

    # 30 000 tokens refill in 30 s at 1 000/s.  The small requests queued before it age
    # ahead of it once (they waited longer), but none behind it passes: served by ~45 s.
    assert waited <= 45.0


async def test_fifo_policy_serves_in_arrival_order() -> None:
    trace: list[str] = []
    alloc = Allocator(pool_config(concurrent=1, **NO_GUARDS), policy=Fifo())
    alloc.register("crit", "critical_path")
    first = await alloc.acquire("occupier")
    async with anyio.create_task_group() as tg:
        for holder in ("n", "crit", "bg"):
            tg.start_soon(_serve, alloc, holder, trace)
            await anyio.sleep(0.001)
        alloc.settle(first.id, 0)
    assert trace == ["n", "crit", "bg"]


async def test_r5_5_a_moved_request_is_never_served_from_its_old_place() -> None:
    """R5.5: a request queued in its arrival place and then moved (here: boosted) leaves
    that place dead for good; the holder's next request waits behind later arrivals."""
    trace: list[str] = []
    async with open_allocator(pool_config(concurrent=1, **NO_GUARDS)) as alloc:
        first = await alloc.acquire("occupier")
        async with anyio.create_task_group() as tg:
            for holder in ("x", "z", "a", "y"):  # one band of level 2: x, z, a, y
                tg.start_soon(_serve, alloc, holder, trace, 0, 1.0 if holder == "x" else 0)
                await anyio.sleep(0.001)
            alloc.set_blocking("a", True)  # a moves to level 3; its old place is dead
            alloc.settle(first.id, 0)  # a, then x (holding for 1 s); z is next
            await anyio.sleep(0.5)
            assert trace == ["a", "x"]
            alloc.set_blocking("a", False)
            tg.start_soon(_serve, alloc, "a", trace, 0)  # queued behind y
    assert trace == ["a", "x", "z", "y", "a"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(
    st.tuples(st.sampled_from(["critical_path", "normal", "background"]),
              st.integers(0, 5000), st.floats(0, 100), st.floats(0, 1), st.booleans()),
    min_size=1, max_size=12,
))
def test_r5_5_grant_order_matches_the_policy_reference_order(
    rows: list[tuple[str, int, float, float, bool]],
) -> None:
    """R5.5: the allocator's O(log n) index serves exactly in the policy's order."""
    _ordered_trace(rows)


def _ordered_trace(rows: list[tuple[str, int, float, float, bool]]) -> list[str]:
    """Queue one request per row at its time; check and return the grant order."""
    async def main() -> list[str]:
        trace: list[str] = []
        async with open_allocator(pool_config(concurrent=1, **NO_GUARDS)) as alloc:
            for i, (cls, service, _, _, _) in enumerate(rows):
                alloc.register(f"h{i}", cls)  # type: ignore[arg-type]
                if service:
                    lease = await alloc.acquire(f"h{i}", tokens=service)
                    alloc.settle(lease.id, service)
            first = await alloc.acquire("occupier")
            base = anyio.current_time()
            async with anyio.create_task_group() as tg:
                for i in sorted(range(len(rows)), key=lambda i: rows[i][2]):
                    await anyio.sleep(max(0.0, base + rows[i][2] - anyio.current_time()))
                    tg.start_soon(_serve, alloc, f"h{i}", trace)
                    await anyio.lowlevel.checkpoint()
                for i, (_, _, _, fraction, blocking) in enumerate(rows):
                    alloc.set_token_fraction(f"h{i}", fraction)
                    alloc.set_blocking(f"h{i}", blocking)
                await anyio.sleep(1)
                now = anyio.current_time()
                waiting = [w for h in alloc._holders.values() for w in h.waiting]
                expected = [w.holder for w in alloc.policy.order(waiting, now)]
                stats_order = [w.holder for w in
                               sorted(alloc.statistics().waiters, key=lambda w: w.position)]
                assert stats_order == expected
                alloc.settle(first.id, 0)
            assert trace == expected
        return trace

    return run_virtual(main)


def test_r5_5_same_inputs_same_dispatch_trace() -> None:
    """Ties break by arrival (seq), never by chance: replaying the same requests gives
    the same grant order."""
    rows = [("normal", 300, 5.0, 0.0, False), ("background", 0, 1.0, 0.0, True),
            ("critical_path", 9000, 50.0, 0.9, False), ("normal", 300, 7.0, 0.0, False)]
    first = _ordered_trace(rows)
    assert first == _ordered_trace(rows)
    assert first == ["h1", "h0", "h3", "h2"]


@pytest.mark.parametrize("policy", [None, Fifo()])
async def test_r5_3_invariants_hold_for_any_policy(policy: Fifo | None) -> None:
    """The max share is enforced by the allocator, not the policy."""
    alloc = Allocator(pool_config(concurrent=4), policy=policy)
    leases = [await alloc.acquire("hog") for _ in range(4)]
    trace: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve, alloc, "hog", trace)
        await anyio.sleep(0.001)
        tg.start_soon(_serve, alloc, "other", trace)
        await anyio.sleep(0.001)
        alloc.settle(leases[0].id, 0)
        await anyio.sleep(0.001)
        assert trace[0] == "other"  # hog holds 3 > 2 = max share while "other" waits
        for lease in leases[1:]:
            alloc.settle(lease.id, 0)
