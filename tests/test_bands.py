"""The band queue behind each priority level (scheduler/_bands.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.fairness import rank_band
from scheduler.allocator._bands import BandQueue, Key, key
from scheduler.allocator._records import Waiter


def _entry(seq: int, rank: float) -> Key:
    w = Waiter(f"h{seq}", seq, 0.0, 2)
    entry = w.entry = key(rank, w)
    return entry


def _drain(q: BandQueue) -> list[int]:
    """Serve everything: the head's waiter leaves (its entry turns dead)."""
    served = []
    while (w := q.head()) is not None:
        served.append(w.seq)
        w.entry = None
    return served


def test_r5_5_lower_band_first_then_arrival_order() -> None:
    """R5.5: ranks in one band tie and go in arrival order; a lower band goes first."""
    q = BandQueue(100)
    for seq, rank in [(1, 150.0), (2, 120.0), (3, 99.0), (4, 199.0), (5, 0.0), (6, 200.0)]:
        q.push(_entry(seq, rank))
    assert q.low() == 0.0  # every key is at least the lowest band's edge
    assert _drain(q) == [3, 5, 1, 2, 4, 6]
    assert q.first is None and not q.bands and not q.order
    assert q.low() == math.inf


def test_r5_5_a_late_push_keeps_its_arrival_place() -> None:
    """R5.5: an entry pushed behind later arrivals (a re-indexed waiter) still goes by seq."""
    q = BandQueue(100)
    for seq in (5, 7, 9):
        q.push(_entry(seq, 10.0))
    q.push(_entry(6, 50.0))  # an older request moved into the band
    q.push(_entry(1, 60.0))
    assert q.first_late is not None
    assert _drain(q) == [1, 5, 6, 7, 9]


def test_r5_5_dead_entries_are_skipped_and_compacted_away() -> None:
    """R5.5: a withdrawn or moved waiter's old entry is never served."""
    q = BandQueue(100)
    entries = [_entry(seq, 10.0 * seq) for seq in range(1, 8)]
    for e in entries:
        q.push(e)
    entries[0].w.entry = None  # withdrawn
    moved = entries[3].w
    moved.entry = key(500.0, moved)  # re-indexed into a later band
    q.push(moved.entry)
    assert q.entries == 8
    q.compact()
    assert q.entries == 6
    assert _drain(q) == [2, 3, 5, 6, 7, 4]


def test_quantum_zero_is_exact_and_inf_is_one_fifo() -> None:
    exact = BandQueue(0)
    for seq, rank in [(1, 2.5), (2, 2.25), (3, 2.5)]:
        exact.push(_entry(seq, rank))
    assert exact.low() == 2.25
    assert _drain(exact) == [2, 1, 3]
    fifo = BandQueue(math.inf)
    for seq, rank in [(1, 9.0), (2, 1.0), (3, 5.0)]:
        fifo.push(_entry(seq, rank))
    assert _drain(fifo) == [1, 2, 3]
    with pytest.raises(ValueError, match="quantum"):
        BandQueue(-1)


@given(st.lists(st.tuples(st.integers(0, 1000), st.booleans()), min_size=1, max_size=60),
       st.sampled_from([0.0, 1.0, 64.0, 100.0, math.inf]))
def test_r5_5_serves_in_band_then_arrival_order(
    rows: list[tuple[int, bool]], quantum: float
) -> None:
    """R5.5: whatever the push order, the queue serves by (band, seq), as the policy orders."""
    q = BandQueue(quantum)
    # Pushes come in arrival order, except the flagged ones, pushed last (re-indexed).
    entries = [_entry(seq, float(rank)) for seq, (rank, _) in enumerate(rows, start=1)]
    for e, (_, moved) in zip(entries, rows, strict=True):
        if not moved:
            q.push(e)
    for e, (_, moved) in zip(entries, rows, strict=True):
        if moved:
            q.push(e)
    expected = sorted(entries, key=lambda e: (rank_band(float(e), quantum), e.w.seq))
    assert _drain(q) == [e.w.seq for e in expected]


def test_r5_5_a_waiter_is_its_own_entry_keyed_by_its_counter() -> None:
    """R5.5: a waiter record queued as its own entry (no Key object) bands by its counter,
    before and after compaction."""
    q = BandQueue(100)
    waiters = []
    for seq, counter in [(1, 250.0), (2, 30.0), (3, 120.0), (4, 60.0)]:
        w = Waiter(f"h{seq}", seq, 0.0, 2, counter=counter)
        w.entry = w
        q.push(w)
        waiters.append(w)
    assert waiters[0].w is waiters[0]
    waiters[2].entry = None  # withdrawn: dead
    q.compact()
    assert q.entries == 3
    assert _drain(q) == [2, 4, 1]
