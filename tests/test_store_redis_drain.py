"""The Redis spool's replay is single-flight: two drains at once (two calls finding
the spool non-empty, Redis flapping meanwhile) neither replay an entry twice nor
drop a write spooled while the first drain was running (R2.6, R1.5).

Real Redis on 127.0.0.1:6379 with a fresh namespace; skips when it is unreachable
unless VIBE_REQUIRE_REDIS=1.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import anyio
import pytest

from scheduler.config import DistributedConfig
from scheduler.store import open_store
from scheduler.store._redis import RedisStore
from tests._cli_helpers import cli
from tests._redis_helpers import REDIS_URL, ScriptGate, TcpProxy
from tests._store_cases import disk_full_once, ev


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r2_6_spool_replay_is_single_flight_and_keeps_writes_spooled_mid_drain(
    redis_ns: str, tmp_path: Path,
) -> None:
    cfg = DistributedConfig(socket_timeout_s=0.5)
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, config=cfg, spool_path=tmp_path / "sp")
        await s.open()
        proxy.cut()
        for n in (1, 2, 3):
            assert await s.record(ev(n)) is True  # spooled
        await s.put_state("k", "a", {"v": 1})
        await s.delete_state("k", "a")  # replayed twice, "a" would come back in between
        assert s.statistics().spooled_writes == 5
        proxy.restore()

        with ScriptGate(s) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(s.flush)
                await gate.reached.wait()  # the first drain is replaying e1
                tg.start_soon(s.flush)  # a second caller finds the spool non-empty
                await anyio.sleep(0.01)
                # Redis flaps: a write made now goes to the spool behind the pending ones
                s._link.mark_down(ConnectionError("flap"))
                assert await s.record(ev(4)) is True
                gate.open()

        assert await s.flush() == 0
        assert [e.event_id for e in await s.events()] == ["e1", "e2", "e3", "e4"]
        assert (await s.totals("session:s1")).tokens == 4 * 162
        assert await s.get_state("k", "a") is None
        assert s.statistics().replayed_writes == 6  # each spooled write exactly once
        await s.aclose()


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r2_6_totals_read_during_a_replay_count_each_spooled_event_once(
    redis_ns: str, tmp_path: Path,
) -> None:
    """Totals read while a replay is half done (Redis flapping again, so the reader does
    not replay itself) hold each spooled event once: not from Redis *and* the spool."""
    cfg = DistributedConfig(socket_timeout_s=0.5)
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, config=cfg, spool_path=tmp_path / "sp")
        await s.open()
        proxy.cut()
        for n in (1, 2, 3):
            await s.record(ev(n))
        proxy.restore()
        seen: list[int] = []

        async def read() -> None:
            seen.append((await s.totals("session:s1")).tokens)

        with ScriptGate(s, at=2) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(s.flush)
                await gate.reached.wait()
                s._link.mark_down(ConnectionError("flap"))
                tg.start_soon(read)
                await anyio.sleep(0.05)
                gate.open()
        assert seen == [3 * 162]
        assert await s.flush() == 0 and (await s.totals("session:s1")).tokens == 3 * 162
        await s.aclose()


def test_r2_6_status_and_report_leave_the_runs_redis_spool_to_the_run(
    redis_ns: str, tmp_path: Path,
) -> None:
    """``status`` and ``report`` beside a running orchestrator count its spooled usage but
    never replay its spool: two processes replaying one spool each drop what they
    replayed, so the second would drop writes the run spooled meanwhile."""
    state = tmp_path / "st"
    spool = state / "redis-spool.jsonl"

    async def spooled() -> None:
        with closing(TcpProxy()) as proxy:
            s = RedisStore(proxy.url, namespace=redis_ns, spool_path=spool,
                           config=DistributedConfig(socket_timeout_s=0.5))
            await s.open()
            proxy.cut()
            for n in (1, 2):
                await s.record(ev(n))
            await s.aclose()

    anyio.run(spooled)
    before = spool.read_bytes()
    url = f"{REDIS_URL}?namespace={redis_ns}"
    for argv in (["status", "--json"], ["report", "--json"]):
        result = cli([*argv, "--state-dir", "st", "--store", url], tmp_path)
        assert result.code == 0, result
        assert spool.read_bytes() == before, argv

    async def reader_totals() -> int:
        r = open_store(url, state, replay_spool=False)
        await r.open()
        try:
            return (await r.totals("session:s1")).tokens
        finally:
            await r.aclose()

    assert anyio.run(reader_totals) == 2 * 162 and spool.read_bytes() == before


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r2_6_two_processes_on_one_spool_do_not_replay_it_at_once(
    redis_ns: str, tmp_path: Path,
) -> None:
    """A spool two stores (two processes: a shared ``spool_path``, a crashed run's spool
    opened twice) both replay: the second leaves it to the first instead of replaying the
    same entries and then dropping as many again, the write spooled meanwhile with them."""
    cfg = DistributedConfig(socket_timeout_s=0.5)
    spool = tmp_path / "sp"
    with closing(TcpProxy()) as proxy:
        a = RedisStore(proxy.url, namespace=redis_ns, config=cfg, spool_path=spool)
        b = RedisStore(proxy.url, namespace=redis_ns, config=cfg, spool_path=spool)
        await a.open()
        proxy.cut()
        for n in (1, 2, 3):
            await a.record(ev(n))
        proxy.restore()
        with ScriptGate(a) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.flush)
                await gate.reached.wait()  # a replays e1
                await b.open()  # b starts, finds the spool being replayed: leaves it to a
                a._link.mark_down(ConnectionError("flap"))
                await a.record(ev(4))  # spooled behind e1..e3
                gate.open()
        assert await a.flush() == 0 and spool.read_text() == ""
        assert [e.event_id for e in await b.events()] == ["e1", "e2", "e3", "e4"]
        assert (await b.totals("session:s1")).tokens == 4 * 162
        await a.aclose()
        await b.aclose()



@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r2_6_a_redis_spool_that_cannot_be_rewritten_fails_no_write(
    redis_ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R2.6: once Redis is back and the spool replayed, a failure to rewrite the spool (a
    full disk) failed the write whose call replayed it; the entries now stay, replayed
    again (idempotently) later, and every event counts once."""
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, config=DistributedConfig(
            socket_timeout_s=0.5), spool_path=tmp_path / "sp")
        await s.open()
        proxy.cut()
        assert await s.record(ev(1)) is True  # spooled
        proxy.restore()
        disk_full_once(monkeypatch)
        assert await s.flush() == 1  # replayed, but its spool could not be rewritten
        assert await s.record(ev(2)) is True
        assert await s.flush() == 0  # replayed again, then dropped
        assert [e.event_id for e in await s.events()] == ["e1", "e2"]
        assert (await s.totals("session:s1")).tokens == 2 * 162
        await s.aclose()
