"""The :class:`~scheduler.store._ledger.SliceBackend` half of the Redis store.

Keys of a global pool ``<name>`` (see :data:`~._redis_lua.LEASE_SLICE`)::

    vibe:{ns}:pool:<name>:grant    hash  holder -> granted per minute
    vibe:{ns}:pool:<name>:demand   hash  holder -> demand per minute
    vibe:{ns}:pool:<name>:exp      zset  holder -> lease expiry (ms)
    vibe:{ns}:pool:<name>:meta     hash  ``short`` (leases granted below their fair share),
                                         ``free``/``at`` (the unassigned capacity's level),
                                         ``cap`` (the capacity last leased against)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.exceptions import RedisError

from scheduler.core import StoreError, StoreUnavailableError
from scheduler.store._ledger import SliceGrant
from scheduler.store._redis_conn import DOWN, RedisConnection


class RedisSlices:
    """Leases of global-pool slices through the store's connection and key prefix."""

    def __init__(self, link: RedisConnection, key: Callable[..., str],
                 now_arg: Callable[[], str], mark_up: Callable[[], None]) -> None:
        self._link, self._key, self._now_arg, self._mark_up = link, key, now_arg, mark_up

    def _pool_keys(self, pool: str) -> list[str]:
        return [self._key("pool", pool, part) for part in ("grant", "demand", "exp", "meta")]

    async def lease(self, pool: str, holder: str, *, demand: int, capacity: int, ttl_s: float,
                    level: float | None = None) -> SliceGrant:
        args = [holder, max(int(demand), 0), int(capacity), int(ttl_s * 1000), self._now_arg(),
                "" if level is None else repr(max(float(level), 0.0))]
        try:
            grant, fair, n, _, credit, short = await self._link.script(
                "lease_slice", self._pool_keys(pool), args)
        except DOWN as exc:
            raise self._link.unavailable("lease_slice", exc) from exc
        self._mark_up()
        return SliceGrant(pool, holder, int(grant), int(fair), int(n), ttl_s, int(credit),
                          int(short))

    async def release(self, pool: str, holder: str) -> None:
        try:
            await self._link.script("release_slice", self._pool_keys(pool),
                                    [holder, self._now_arg()])
        except DOWN as exc:
            raise self._link.unavailable("release_slice", exc) from exc

    async def shortfalls(self, pools: Sequence[str]) -> list[int]:
        """One round trip; while Redis is backing off, refused without trying (a poll)."""
        if self._link.backing_off():
            raise StoreUnavailableError("Redis unreachable moments ago; retrying shortly")
        keys = [self._key("pool", pool, "meta") for pool in pools]
        try:
            async with self._link.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, "short")
                values = await pipe.execute()
        except DOWN as exc:
            raise self._link.unavailable("slice_shortfalls", exc) from exc
        except RedisError as exc:
            raise StoreError(f"Redis slice_shortfalls failed: {exc}") from exc
        return [int(v or 0) for v in values]
