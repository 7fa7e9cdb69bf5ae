"""The usage log of a Redis store holds the events still in the spool (written while
Redis was unreachable), as its totals already do: ``report`` and ``status`` read right
after an outage count every paid call once (R2.6).

Real Redis on 127.0.0.1:6379 with a fresh namespace, its link cut through a TCP proxy;
skips when Redis is unreachable unless VIBE_REQUIRE_REDIS=1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from scheduler.config import DistributedConfig
from scheduler.store._base import charge_open_call
from scheduler.store._redis import RedisStore
from scheduler.store._spool import SpooledState
from tests._redis_helpers import REDIS_URL, TcpProxy
from tests._store_cases import ev

BIN = Path(sys.executable).parent / "vibe-engine"
CFG = DistributedConfig(socket_timeout_s=0.5)


async def _one_recorded_two_spooled(redis_ns: str, spool: Path) -> None:
    """e1 (t1) reaches Redis; then the link is cut and e2 (t1), e3 (t2) are spooled."""
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, spool_path=spool, config=CFG)
        await s.open()
        await s.record(ev(1))
        proxy.cut()
        await s.record(ev(2))
        await s.record(ev(3, task="t2"))
        assert len(s.spool) == 2
        await s.aclose()


def test_r2_6_report_right_after_an_outage_counts_the_spooled_calls(
    redis_ns: str, tmp_path: Path,
) -> None:
    """Three calls paid, two of them spooled while Redis was unreachable; Redis answers
    again before the run's process replayed them.  ``vibe-engine report`` counted 1 call
    and 162 tokens (Redis's log only); it counts 3 calls and 486 tokens, as the totals
    do, and leaves the spool to the process that replays it."""
    state = tmp_path / "st"
    spool = state / "redis-spool.jsonl"
    anyio.run(_one_recorded_two_spooled, redis_ns, spool)
    before = spool.read_bytes()
    out = subprocess.run([str(BIN), "report", "--json", "--state-dir", str(state), "--store",
                          f"{REDIS_URL}?namespace={redis_ns}"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["total"]["calls"], doc["total"]["tokens"]) == (3, 3 * 162)
    assert sorted((t["task_id"], t["calls"]) for t in doc["tasks"]) == [("t1", 2), ("t2", 1)]
    assert spool.read_bytes() == before


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r2_6_events_hold_spooled_events_once_filtered_as_recorded_ones(
    redis_ns: str, tmp_path: Path,
) -> None:
    """A reader's ``events()`` holds the spooled events that match its filter, in order,
    each once -- before the replay and after it -- and not the estimate a spooled
    settle replaces when it is replayed."""
    spool = tmp_path / "sp"
    await _one_recorded_two_spooled(redis_ns, spool)
    reader = RedisStore(REDIS_URL, namespace=redis_ns, config=CFG, spool_path=spool,
                        replay=False)
    await reader.open()
    try:
        assert [e.event_id for e in await reader.events()] == ["e1", "e2", "e3"]
        assert [e.event_id for e in await reader.events(task_id="t1")] == ["e1", "e2"]
        assert [e.event_id for e in await reader.events(task_id="t2")] == ["e3"]
        replica = RedisStore(REDIS_URL, namespace=redis_ns, config=CFG, spool_path=spool)
        await replica.open()  # replays the spool
        assert spool.read_text() == ""
        for store in (reader, replica):
            assert [e.event_id for e in await store.events()] == ["e1", "e2", "e3"]
        await replica.aclose()
    finally:
        await reader.aclose()


@pytest.mark.real_asyncio
async def test_r2_6_events_leave_out_an_estimate_its_spooled_settle_replaces(
    redis_ns: str, tmp_path: Path,
) -> None:
    """A call charged at its estimate (``e5:estimate``) whose own settle was spooled with
    the close of its record: the log read shows the settle, not both."""
    from dataclasses import replace

    spool = tmp_path / "sp"
    with closing(TcpProxy()) as proxy:
        s = RedisStore(proxy.url, namespace=redis_ns, spool_path=spool, config=CFG)
        await s.open()
        await s.put_state("open_call", "e5", {"event_id": "e5"})
        assert await charge_open_call(s, replace(ev(4), event_id="e5:estimate"), "e5", {
            "charged_event_id": "e5:estimate"})  # its process taken for dead
        proxy.cut()
        await s.record_and_delete_state(ev(5), "open_call", "e5")
        assert isinstance(s.spool.read()[-1], SpooledState)
        await s.aclose()
    reader = RedisStore(REDIS_URL, namespace=redis_ns, config=CFG, spool_path=spool,
                        replay=False)
    await reader.open()
    try:
        assert [e.event_id for e in await reader.events()] == ["e5"]
        replica = RedisStore(REDIS_URL, namespace=redis_ns, config=CFG, spool_path=spool)
        await replica.open()  # the replay replaces the estimate
        assert [e.event_id for e in await replica.events()] == ["e5"]
        assert (await replica.totals("task:t1")).calls == 1
        await replica.aclose()
    finally:
        await reader.aclose()
