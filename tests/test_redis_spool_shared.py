"""Orchestrators and ``serve`` replicas on one Redis namespace in one directory share the
Redis spool (``.vibe-engine/redis-spool.jsonl``), as processes on one SQLite file share
theirs: usage one of them spooled while Redis was unreachable counts in every other's
totals and holds, once (never again after its replay), and a hold's snapshot of the
shared totals never drops a charge this process spooled while it was read (R1.2, R2.6).

Real Redis on 127.0.0.1:6379 with a fresh namespace; skips when it is unreachable
unless VIBE_REQUIRE_REDIS=1.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import anyio
import pytest

from scheduler import BudgetExceededError, Usage
from scheduler.config import DistributedConfig
from scheduler.store._redis import RedisStore
from tests._redis_helpers import REDIS_URL, ScriptGate, TcpProxy
from tests._store_cases import ev, open_tracker, session_config

_CFG = DistributedConfig(socket_timeout_s=0.5)


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r2_6_a_replica_counts_usage_another_spooled_in_the_shared_spool(
    redis_ns: str, tmp_path: Path,
) -> None:
    """Replica A spools 3 events (486 tokens) while its link to Redis is cut; replica B,
    running beside it on the same spool, read its totals before.  B's totals and its next
    hold count A's spooled usage (B replays it: the hold is checked against it), and
    after that replay each counts it once.  Before: B saw 0 and granted a 200-token hold
    under a 600-token session budget already 486 spent."""
    spool = tmp_path / "redis-spool.jsonl"
    with closing(TcpProxy()) as proxy:
        a = RedisStore(proxy.url, namespace=redis_ns, config=_CFG, spool_path=spool)
        b = RedisStore(REDIS_URL, namespace=redis_ns, config=_CFG, spool_path=spool)
        await a.open()
        await b.open()
        tb = await open_tracker(b, session_config(600), "tb")
        assert (await b.totals("session:shared")).tokens == 0
        proxy.cut()
        for n in (1, 2, 3):
            await a.record(ev(n, task="ta", session="shared"))
        assert (await b.totals("session:shared")).tokens == 3 * 162
        with pytest.raises(BudgetExceededError):
            await tb.reserve_shared("tb", model="sonnet", tokens=200, cost_usd=0.0)
        assert spool.read_text() == ""  # replayed by B, once
        proxy.restore()
        assert (await b.totals("session:shared")).tokens == 3 * 162
        assert (await a.totals("session:shared")).tokens == 3 * 162
        await a.aclose()
        await b.aclose()


@pytest.mark.real_asyncio
async def test_r1_2_a_hold_snapshot_keeps_a_charge_spooled_while_it_was_read(
    redis_ns: str, tmp_path: Path,
) -> None:
    """A hold's reply carries the shared totals it read; a charge of this process spooled
    while that hold was on its way (Redis cut for a moment) is not in them, nor versioned,
    while another process's usage recorded meanwhile makes them newer.  Taking that
    snapshot over dropped the charge from the process's session total until the next
    hold (1,000 tokens seen as 162); the process keeps it, and the next hold's snapshot
    (the spool replayed first) brings both."""
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, config=_CFG,
                       spool_path=tmp_path / "sp")
        other = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "other")
        await s.open()
        await other.open()
        tr = await open_tracker(s, session_config(100_000), "t")
        first = await tr.reserve_shared("t", model="sonnet", tokens=2_000, cost_usd=0.0)
        got: list[object] = []

        async def second() -> None:
            got.append(await tr.reserve_shared("t", model="sonnet", tokens=100, cost_usd=0.0))

        with ScriptGate(s, at=1) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(second)
                await gate.reached.wait()  # the second hold is on its way
                proxy.cut()
                await tr.charge(tr.make_event("t", model="sonnet", usage=Usage(500, 500)), first)
                assert len(s.spool) == 1 and tr.session.totals.tokens == 1_000
                await other.record(ev(9, task="elsewhere", session="shared"))
                proxy.restore()
                await anyio.sleep(0.3)  # past the back-off: the held script reaches Redis
                gate.open()
        assert got and tr.session.totals.tokens == 1_000
        await tr.reserve_shared("t", model="sonnet", tokens=100, cost_usd=0.0)
        assert tr.session.totals.tokens == 1_162 == (await s.totals("session:shared")).tokens
        await s.aclose()
        await other.aclose()


@pytest.mark.real_asyncio
async def test_r1_2_a_totals_read_holds_a_charge_spooled_while_it_was_read(
    redis_ns: str, tmp_path: Path,
) -> None:
    """The same race on a plain read of the totals (a task's or a new day's first read,
    a refresh after an estimate was replaced): a charge of this process spooled while
    the read was on its way was in neither Redis's answer nor the spool read before it,
    so the read missed it (0 tokens instead of 162); it is read again with the spool."""
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, config=_CFG, spool_path=tmp_path / "sp")
        await s.open()
        client = s._link.client
        real, reached, opened = client.hgetall, anyio.Event(), anyio.Event()

        async def held(name: str) -> object:
            reached.set()
            await opened.wait()
            return await real(name)

        client.hgetall = held  # type: ignore[method-assign, assignment]
        got: list[int] = []

        async def read() -> None:
            got.append((await s.totals_with_version("session:s1"))[0].tokens)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await reached.wait()
            client.hgetall = real  # type: ignore[method-assign]
            proxy.cut()
            await s.record(ev(1))
            assert len(s.spool) == 1
            proxy.restore()
            await anyio.sleep(0.3)  # past the back-off
            opened.set()
        assert got == [162]
        await s.aclose()
