"""Readers of a Redis store beside the orchestrator that owns its spool (``status``,
``report``, ``run``'s check of its session id) count the spooled usage once and leave the
spool to that orchestrator: a replay drops its entries only once it ends, so a read in
between must wait for it, and a second process replaying the spool (or dropping from it)
could lose a write spooled meanwhile (R2.6).

Real Redis on 127.0.0.1:6379 with a fresh namespace; skips when it is unreachable
unless VIBE_REQUIRE_REDIS=1.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import anyio
import pytest

from scheduler.config import DistributedConfig
from scheduler.store._redis import RedisStore
from tests._redis_helpers import ScriptGate, TcpProxy
from tests._store_cases import ev


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r2_6_a_reader_beside_another_process_replaying_counts_each_event_once(
    redis_ns: str, tmp_path: Path,
) -> None:
    """``status`` or ``report`` (a store that never replays) reading totals while the
    run's process is half way through replaying the spool they share: e1 is in Redis and
    still in the spool (a replay drops its entries at its end), so reading both counted
    it twice.  The reader waits for the replay, then counts each spooled event once."""
    cfg = DistributedConfig(socket_timeout_s=0.5)
    spool = tmp_path / "sp"
    with closing(TcpProxy()) as proxy:
        a = RedisStore(proxy.url, namespace=redis_ns, config=cfg, spool_path=spool)
        await a.open()
        proxy.cut()
        for n in (1, 2, 3):
            await a.record(ev(n))
        proxy.restore()
        reader = RedisStore(proxy.url, namespace=redis_ns, config=cfg, spool_path=spool,
                            replay=False)
        await reader.open()
        seen: list[int] = []

        async def read() -> None:
            seen.append((await reader.totals("session:s1")).tokens)

        with ScriptGate(a, at=2) as gate:
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.flush)
                await gate.reached.wait()
                tg.start_soon(read)
                await anyio.sleep(0.05)
                gate.open()
        assert seen == [3 * 162]
        assert spool.read_text() == "" and (await reader.totals("session:s1")).tokens == 3 * 162
        await a.aclose()
        await reader.aclose()


def test_r2_6_run_and_resume_read_sessions_leaving_the_redis_spool_alone(
    redis_ns: str, tmp_path: Path,
) -> None:
    """``run`` reads the store's record of a configured ``session_id``, ``resume`` the
    sessions of its state directory, before anything starts: a reader's read, like
    ``status``'s.  Replaying the state directory's
    spool there (an orchestrator may be running in it, about to refuse the new run) would
    drop entries under that orchestrator, and a write it spooled meanwhile with them."""
    from scheduler.cli._sessions import check_new_session, resumable_config
    from scheduler.config import config_from_dict
    from scheduler.core import SessionError
    from tests._redis_helpers import REDIS_URL

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
    config = config_from_dict({"state_dir": str(state), "session_id": "nightly",
                               "store": f"{REDIS_URL}?namespace={redis_ns}"})
    check_new_session(config)  # no record of "nightly": a new session
    assert spool.read_bytes() == before
    with pytest.raises(SessionError, match="no interrupted session"):
        resumable_config(state, config.store, None)
    assert spool.read_bytes() == before
