"""RedisStore when Redis goes away: usage spooled and replayed, fail-open allowances,
state writes replayed in order, and calls that wait for the ledger (R1.2, R2.6).

Redis cases use the real server on 127.0.0.1:6379 with a fresh namespace each;
they skip when it is unreachable unless VIBE_REQUIRE_REDIS=1 (then they fail).
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import anyio
import pytest

from scheduler import UsageEvent
from scheduler.config import DistributedConfig
from scheduler.core import StoreUnavailableError
from scheduler.store import MemoryStore
from scheduler.store._ledger import Hold, ScopeLimit
from scheduler.store._redis import RedisStore
from tests._redis_helpers import REDIS_URL, TcpProxy
from tests._store_cases import ev, open_tracker, session_config, session_limits

# -- connection loss ---------------------------------------------------------------------


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_fail_closed_spools_usage_and_replays_it(redis_ns: str, tmp_path: Path) -> None:
    """Redis down (connection cut): no new holds; usage of calls in flight is spooled
    to disk and reaches Redis after reconnection; nothing is lost or double-charged."""
    cfg = DistributedConfig(socket_timeout_s=0.5)
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, config=cfg, spool_path=tmp_path / "sp")
        await s.open()
        h = await s.try_reserve("h1", session_limits(1_000), model="sonnet", tokens=300,
                                cost_usd=0.0)
        assert await s.record(ev(1)) is True
        proxy.cut()
        with pytest.raises(StoreUnavailableError):
            await s.try_reserve("h2", session_limits(1_000), model="sonnet", tokens=1, cost_usd=0.0)
        assert await s.settle(ev(2), h) is True  # the call in flight completes
        assert await s.record(ev(3)) is True
        assert s.statistics().spooled_writes == 2 and not s.statistics().connected
        # a second process (or a restarted one) replays the same spool: still no loss
        proxy.restore()
        assert await s.flush() == 0
        assert s.statistics().replayed_writes == 2 and s.statistics().connected
        direct = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "d")
        await direct.open()
        assert [e.event_id for e in await direct.events()] == ["e1", "e2", "e3"]
        assert (await direct.totals("session:s1")).tokens == 3 * 162
        h3 = await direct.try_reserve("h3", session_limits(1_000), model="sonnet", tokens=514,
                                      cost_usd=0.0)  # h1 was released by the replayed settle
        assert h3.held["session:s1"][0] == 514
        await direct.aclose()
        await s.aclose()


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_fail_open_grants_only_the_local_allowance(redis_ns: str, tmp_path: Path) -> None:
    cfg = DistributedConfig(failure_mode="open", fail_open_tokens=1_000, socket_timeout_s=0.5)
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, config=cfg, spool_path=tmp_path / "sp")
        await s.open()
        proxy.cut()
        h = await s.try_reserve("h1", session_limits(10), model="sonnet", tokens=600, cost_usd=0.0)
        assert h.local
        with pytest.raises(StoreUnavailableError, match="allowance"):
            await s.try_reserve("h2", session_limits(10), model="sonnet", tokens=600, cost_usd=0.0)
        assert await s.settle(ev(1), h)
        proxy.restore()
        assert await s.flush() == 0
        assert (await s.totals("session:s1")).tokens == 162
        assert s.statistics().fail_open_tokens_used == 0  # reset once Redis is back
        await s.aclose()


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_spool_survives_a_new_process(redis_ns: str, tmp_path: Path) -> None:
    """Usage spooled by a process that then died is replayed by the next one's open()."""
    spool = tmp_path / "sp"
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, spool_path=spool,
                       config=DistributedConfig(socket_timeout_s=0.5))
        await s.open()
        proxy.cut()
        await s.record(ev(1))
        await s.aclose()  # "dies" with one event spooled
        assert spool.read_text().count("\n") == 1
        s2 = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=spool)
        await s2.open()
        assert [e.event_id for e in await s2.events()] == ["e1"]
        assert spool.read_text() == ""
        await s2.aclose()




@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_state_writes_during_an_outage_are_replayed_in_order(
    redis_ns: str, tmp_path: Path
) -> None:
    """A task finishing while Redis is down still records its state; writes are replayed
    in their original order (the delete after the put wins)."""
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, spool_path=tmp_path / "sp",
                       config=DistributedConfig(socket_timeout_s=0.5))
        await s.open()
        proxy.cut()
        await s.put_state("task", "t1", {"status": "completed"})
        await s.record(ev(1))
        await s.put_state("task", "t2", {"status": "running"})
        await s.delete_state("task", "t2")
        assert s.statistics().spooled_writes == 4
        proxy.restore()
        assert await s.flush() == 0
        assert await s.list_state("task") == {"t1": {"status": "completed"}}
        assert (await s.totals("task:t1")).tokens == 162
        await s.aclose()


class FlakyLedger(MemoryStore):
    """A MemoryStore that is also a BudgetLedger, unreachable for the first ``down`` tries."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down
        self.tries = 0

    async def try_reserve(
        self, hold_id: str, limits: tuple[ScopeLimit, ...], *, model: str, tokens: int,
        cost_usd: float,
    ) -> Hold:
        self.tries += 1
        if self.tries <= self.down:
            raise StoreUnavailableError("down")
        return Hold(hold_id, tuple(lim.scope for lim in limits), model, tokens, cost_usd, {}, {})

    async def settle(self, event: UsageEvent, hold: Hold) -> bool:
        return await self.record(event)

    async def release(self, hold: Hold) -> None:
        return None


@pytest.mark.parametrize(("down", "granted"), [(4, True), (100, False)])
async def test_fail_closed_new_calls_wait_for_the_ledger_then_fail(
    down: int, granted: bool,
) -> None:
    """Fail-closed: reserve_shared waits (backing off) for the ledger up to
    unavailable_wait_s, then raises StoreUnavailableError and undoes its local hold."""
    cfg = session_config(10_000).model_copy(
        update={"distributed": DistributedConfig(unavailable_wait_s=10.0)}
    )

    ledger = FlakyLedger(down)
    tr = await open_tracker(ledger, cfg, "t")
    t0 = anyio.current_time()
    if granted:
        r = await tr.reserve_shared("t", model="sonnet", tokens=100, cost_usd=0.0)
        assert r.hold is not None
    else:
        with pytest.raises(StoreUnavailableError):
            await tr.reserve_shared("t", model="sonnet", tokens=100, cost_usd=0.0)
        assert tr.session.reserved_tokens == 0
    waited = anyio.current_time() - t0
    if granted:
        assert waited == pytest.approx(0.05 + 0.1 + 0.2 + 0.4)
    else:
        assert 9.0 <= waited <= 10.0
