"""The Redis slice script's bucket levels and shortfalls (R5.4 across processes): a fresh
pool's first slice comes full, a shrinking holder gives its level above the new slice back
and a growing one takes it, unassigned capacity refills at its own rate, and a lease below
its fair share is counted -- step for step as the in-memory :class:`~tests._fakes.BucketSlices`
the virtual-time fleet tests run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.store._ledger import SliceGrant
from scheduler.store._redis import RedisStore
from tests._fakes import BucketSlices
from tests._redis_helpers import REDIS_URL

pytestmark = pytest.mark.anyio

#: (clock ms, holder, demand, level reported; None: a release) and what the lease answers:
#: (granted, fair share, holders, level credit, shortfalls).
STEPS: list[tuple[int, str, int, float | None, tuple[int, int, int, int, int] | None]] = [
    (0, "a", 900, None, (900, 900, 1, 900, 0)),  # a fresh pool: the whole burst
    (0, "b", 900, None, (0, 450, 2, 0, 1)),  # a holds it all: b is short
    (1_000, "a", 900, 600.0, (450, 450, 2, 0, 1)),  # a keeps 450 of its 600, gives 150
    (1_000, "b", 900, 0.0, (450, 450, 2, 150, 1)),  # b takes the 150 a gave back
    (7_000, "c", 300, 0.0, (0, 300, 3, 0, 2)),
    (7_000, "b", 0, 450.0, None),  # b leaves: its level is not returned
    (13_000, "c", 300, 0.0, (300, 300, 1, 45, 2)),  # a expired at 11 s; 450 free for 6 s
]


def _answer(g: SliceGrant) -> tuple[int, int, int, int, int]:
    return g.amount, g.fair_share, g.holders, g.credit, g.shortfalls


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r5_4_slice_levels_and_shortfalls_on_redis(redis_ns: str, tmp_path: Path) -> None:
    """R5.4: the fleet's levels never add up to more than one bucket of the capacity (900):
    the script answers the expected grants, credits and shortfall counts, as the
    in-memory mirror does; ``slice_shortfalls`` reads the count."""
    now = [0]
    store = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "sp",
                       now_ms=lambda: now[0])
    mirror = BucketSlices(clock=lambda: now[0] / 1000)
    await store.open()
    try:
        for at, holder, demand, level, expected in STEPS:
            now[0] = at
            if expected is None:
                await store.release_slice("tpm", holder)
                mirror.release("tpm", holder)
                continue
            got = await store.lease_slice("tpm", holder, demand=demand, capacity=900,
                                          ttl_s=10, level=level)
            assert _answer(got) == expected, (at, holder)
            assert _answer(mirror.lease("tpm", holder, demand, 900, 10, level)) == expected
        assert await store.slice_shortfalls(["tpm", "other"]) == [2, 0]
    finally:
        await store.aclose()
