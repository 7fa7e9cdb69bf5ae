"""Test doubles of the tests only (plugin authors' ones live in ``scheduler.testing``)."""

from __future__ import annotations

import anyio

from scheduler.store import MemoryStore
from scheduler.store._ledger import SliceGrant


class SlicedMemoryStore(MemoryStore):
    """A MemoryStore that also leases global-pool slices (the SliceBackend of Redis):
    every lease is granted ``min(share, demand)``; leases and releases are recorded."""

    def __init__(self, share: int) -> None:
        super().__init__()
        self.share = share
        self.leases: list[tuple[str, str, int, int]] = []
        self.released: list[tuple[str, str]] = []

    async def lease_slice(
        self, pool: str, holder: str, *, demand: int, capacity: int, ttl_s: float
    ) -> SliceGrant:
        await anyio.lowlevel.checkpoint()
        self.leases.append((pool, holder, demand, capacity))
        amount = min(self.share, demand, capacity)
        return SliceGrant(pool, holder, amount, amount, 1, ttl_s)

    async def release_slice(self, pool: str, holder: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.released.append((pool, holder))
