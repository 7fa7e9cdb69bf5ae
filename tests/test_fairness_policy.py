"""Allocation policies as pure functions: no event loop (R5.1, R5.2, R5.3)."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.fairness import (
    AllocationPolicy,
    FairnessParams,
    Fifo,
    PolicyHints,
    PriorityWithFairness,
    WaiterView,
)


def waiter(
    holder: str = "t", seq: int = 0, *, at: float = 0.0, base: int = 2, fraction: float = 0.0,
    blocking: bool = False, counter: float = 0.0,
) -> WaiterView:
    return WaiterView(holder, seq, at, base, 100, fraction, blocking, counter)


POLICY = PriorityWithFairness()


def test_policies_match_the_protocol() -> None:
    assert isinstance(POLICY, AllocationPolicy)
    assert isinstance(Fifo(), AllocationPolicy)


def test_r5_1_base_priorities() -> None:
    assert [POLICY.priority(waiter(base=b), 0.0) for b in (3, 2, 1)] == [3, 2, 1]


def test_r5_2_aging_after_30s_repeatable() -> None:
    """R5.2, the default (chosen) rule: +1 for every full 30 s waited, without bound."""
    w = waiter(base=1, at=100.0)
    assert POLICY.priority(w, 129.9) == 1
    assert POLICY.priority(w, 130.0) == 2
    assert POLICY.priority(w, 159.9) == 2
    assert POLICY.priority(w, 190.0) == 4
    assert POLICY.priority_changes_at(w, 100.0) == 130.0
    assert POLICY.priority_changes_at(w, 131.0) == 160.0


def test_r5_2_aging_bounded_to_the_specs_plus_one() -> None:
    """R5.2 as written: ``aging_max_steps = 1`` gives +1 after 30 s, once."""
    once = PriorityWithFairness(FairnessParams(aging_max_steps=1))
    w = waiter(base=1, at=100.0)
    assert once.priority(w, 129.9) == 1
    assert once.priority(w, 130.0) == 2
    assert once.priority(w, 10_000.0) == 2
    assert once.priority_changes_at(w, 100.0) == 130.0
    assert once.priority_changes_at(w, 131.0) is None  # fully aged
    two = PriorityWithFairness(FairnessParams(aging_max_steps=2))
    assert two.priority(w, 190.0) == 3
    assert two.priority_changes_at(w, 161.0) is None


def test_r5_2_demotion_above_half_budget() -> None:
    assert POLICY.priority(waiter(fraction=0.50), 0.0) == 2
    assert POLICY.priority(waiter(fraction=0.51), 0.0) == 1
    custom = PriorityWithFairness(FairnessParams(demotion_at=0.8))
    assert custom.priority(waiter(fraction=0.7), 0.0) == 2


def test_r5_2_blocking_raises_to_at_least_3() -> None:
    assert POLICY.priority(waiter(base=1, blocking=True), 0.0) == 3
    assert POLICY.priority(waiter(base=2, fraction=0.9, blocking=True), 0.0) == 3
    # Never lowers: an aged critical task stays above 3.
    assert POLICY.priority(waiter(base=3, at=0.0, blocking=True), 31.0) == 4


def test_r5_3_vtc_service_counts_output_twice() -> None:
    assert POLICY.service(1000, 500) == 2000
    assert PriorityWithFairness(FairnessParams(output_weight=4)).service(10, 10) == 50
    assert POLICY.rank(waiter(counter=123.0)) == 123.0


def test_r5_3_order_priority_then_least_service_then_arrival() -> None:
    ws = [
        waiter("bg", 0, base=1),
        waiter("rich", 1, base=2, counter=5000),
        waiter("poor", 2, base=2, counter=10),
        waiter("tie", 3, base=2, counter=10),
        waiter("crit", 4, base=3, counter=99_999),
    ]
    assert [w.holder for w in POLICY.order(ws, 0.0)] == ["crit", "poor", "tie", "rich", "bg"]
    picked = POLICY.pick(ws, 0.0)
    assert picked is not None and picked.holder == "crit"
    assert POLICY.pick([], 0.0) is None


def test_fifo_ignores_priority_and_service() -> None:
    ws = [waiter("a", 2, base=3), waiter("b", 0, base=1, counter=1e9), waiter("c", 1)]
    fifo = Fifo()
    assert [w.holder for w in fifo.order(ws, 100.0)] == ["b", "c", "a"]
    assert fifo.priority_changes_at(ws[0], 0.0) is None


def test_params_are_frozen_and_validated() -> None:
    params = FairnessParams()
    with pytest.raises(pydantic.ValidationError):
        params.aging_after_s = 1  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        FairnessParams(aging_after_s=0)
    with pytest.raises(pydantic.ValidationError):
        FairnessParams(unknown=1)  # type: ignore[call-arg]


@given(
    st.lists(
        st.tuples(
            st.integers(1, 3), st.floats(0, 200), st.floats(0, 1), st.booleans(),
            st.floats(0, 1e6),
        ),
        min_size=1, max_size=30,
    ),
    st.floats(200, 400),
)
def test_r5_5_order_is_a_total_order_consistent_with_priority(
    rows: list[tuple[int, float, float, bool, float]], now: float
) -> None:
    """R5.5: the served-first waiter has the highest effective priority, least service
    (counters in one band of ``rank_quantum`` tokens tie, then the earlier goes first)."""
    ws = [waiter(f"h{i}", i, base=b, at=at, fraction=f, blocking=bl, counter=c)
          for i, (b, at, f, bl, c) in enumerate(rows)]
    ordered = POLICY.order(ws, now)
    assert sorted(w.seq for w in ordered) == list(range(len(ws)))
    q = POLICY.rank_quantum
    assert q == 100
    keys = [(-POLICY.priority(w, now), w.counter // q, w.seq) for w in ordered]
    assert keys == sorted(keys)
    # Waiting longer never lowers a waiter's priority (aging is monotone); bounded aging
    # raises it by at most 1 in all.
    once = PriorityWithFairness(FairnessParams(aging_max_steps=1))
    for w in ws:
        assert POLICY.priority(w, now + 30) >= POLICY.priority(w, now)
        assert once.priority(w, now + 1e6) <= once.priority(w, w.enqueued_at) + 1
        nxt = POLICY.priority_changes_at(w, now)
        assert nxt is not None and nxt > now
        if not w.blocking:  # blocking clamps the level at 3 for a while
            assert POLICY.priority(w, nxt) == POLICY.priority(w, now) + 1


@given(
    base=st.integers(0, 4), fraction=st.floats(0, 1), blocking=st.booleans(),
    at=st.floats(0, 1e6), counter=st.floats(0, 1e9), i=st.integers(0, 10**6),
    o=st.integers(0, 10**6), weight=st.sampled_from([0.0, 1.0, 2.0, 2.5]),
)
def test_r5_2_policy_hints_agree_with_the_policy_methods(
    base: int, fraction: float, blocking: bool, at: float, counter: float, i: int, o: int,
    weight: float,
) -> None:
    """The allocator's shortcuts (PolicyHints) give what the methods give, for the built-ins."""
    params = FairnessParams(output_weight=weight)
    for policy in (PriorityWithFairness(params), Fifo(params)):
        assert isinstance(policy, PolicyHints)
        w = waiter(at=at, base=base, fraction=fraction, blocking=blocking, counter=counter)
        assert policy.enqueue_priority(base, fraction, blocking) == policy.priority(w, at)
        step = policy.aging_step_s
        assert policy.priority_changes_at(w, at) == (None if step is None else at + step)
        if policy.ranks_by_counter:
            assert policy.rank(w) == counter
        wi, wo = policy.service_weights
        assert policy.service(i, o) == wi * i + wo * o
