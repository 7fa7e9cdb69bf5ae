"""State records (a task's end, a session's) that a process spooled while Redis was
unreachable are what every reader of the store sees -- ``get_state``, ``list_state`` and
``vibe-engine status`` -- until they are replayed, as the spooled usage already counts in
the totals: the spool's last write per key over Redis's (R2.6).

Real Redis on 127.0.0.1:6379 with a fresh namespace, the writer a separate process whose
link to it is cut; skips when Redis is unreachable unless VIBE_REQUIRE_REDIS=1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from scheduler.config import DistributedConfig
from scheduler.store._redis import RedisStore
from tests._redis_helpers import REDIS_URL, TcpProxy

BIN = Path(sys.executable).parent / "vibe-engine"
ROOT = Path(__file__).resolve().parents[1]

#: Process A: the session and its task written while Redis answers, then (its link cut)
#: both ended, a stray record deleted, and A gone with the writes still spooled.
_WRITER = """
import sys, anyio
from scheduler.config import DistributedConfig
from scheduler.store import task_key
from scheduler.store._redis import RedisStore

async def main(url, ns, spool):
    s = RedisStore(url, namespace=ns, spool_path=spool,
                   config=DistributedConfig(socket_timeout_s=0.5))
    await s.open()
    session = {"session_id": "s1", "state": "running", "tasks": ["t1"],
               "started": "2026-12-05T23:00:00"}
    await s.put_state("session", "s1", session)
    await s.put_state("task", task_key("s1", "t1"), {"status": "running"})
    await s.put_state("note", "gone", {"n": 0})
    print("up", flush=True)
    sys.stdin.readline()  # the link is cut now
    await s.put_state("task", task_key("s1", "t1"), {"status": "running", "calls": 1})
    await s.put_state("task", task_key("s1", "t1"), {"status": "completed",
                                                     "result": {"answer": 42}})
    await s.put_state("session", "s1", {**session, "state": "completed"})
    await s.delete_state("note", "gone")
    await s.put_state("note", "new", {"n": 1})
    print(len(s.spool), flush=True)

anyio.run(main, *sys.argv[1:])
"""


def _spool_from_another_process(proxy: TcpProxy, ns: str, spool: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", _WRITER, proxy.url, ns, str(spool)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          cwd=ROOT) as a:
        assert a.stdin is not None and a.stdout is not None
        assert a.stdout.readline().strip() == "up"
        proxy.cut()
        a.stdin.write("\n")
        a.stdin.flush()
        assert a.stdout.readline().strip() == "5"  # five writes spooled, none replayed
        assert a.wait(timeout=30) == 0


def test_r2_6_status_shows_the_task_end_another_process_spooled(
    redis_ns: str, tmp_path: Path,
) -> None:
    """Process A ended task t1 (result 42) and its session while its link to Redis was
    cut, and exited.  ``vibe-engine status`` (Redis up) showed t1 ``interrupted`` with
    no result (Redis's ``running`` record of a session no process runs); it shows it
    completed with its result, and leaves the spool to the orchestrator that replays it."""
    state = tmp_path / "st"
    spool = state / "redis-spool.jsonl"
    with closing(TcpProxy()) as proxy:
        _spool_from_another_process(proxy, redis_ns, spool)
    before = spool.read_bytes()
    out = subprocess.run([str(BIN), "status", "--json", "--state-dir", str(state), "--store",
                          f"{REDIS_URL}?namespace={redis_ns}"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["session_id"] == "s1"
    assert [(t["task_id"], t["status"], t["result"]) for t in doc["tasks"]] == [
        ("t1", "completed", {"answer": 42})]
    assert spool.read_bytes() == before


@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r2_6_state_reads_see_spooled_writes_the_last_one_winning(
    redis_ns: str, tmp_path: Path,
) -> None:
    """``get_state`` / ``list_state`` of a reader (``replay=False``) and of a replica that
    replays see another process's spooled writes: its last write of a key, its delete,
    its new key; once replayed, Redis holds the same.  Before: the reader saw Redis's
    ``running`` record, the deleted ``gone`` and no ``new``."""
    spool = tmp_path / "st" / "redis-spool.jsonl"
    with closing(TcpProxy()) as proxy:
        _spool_from_another_process(proxy, redis_ns, spool)
    cfg = DistributedConfig(socket_timeout_s=0.5)
    reader = RedisStore(REDIS_URL, namespace=redis_ns, config=cfg, spool_path=spool,
                        replay=False)
    await reader.open()
    ended = {"status": "completed", "result": {"answer": 42}}
    assert await reader.get_state("task", "s1/t1") == ended
    assert await reader.list_state("task") == {"s1/t1": ended}
    assert await reader.list_state("note") == {"new": {"n": 1}}
    assert await reader.get_state("note", "gone") is None
    assert (await reader.get_state("session", "s1") or {})["state"] == "completed"
    assert len(spool.read_text().splitlines()) == 5  # a reader never replays
    replica = RedisStore(REDIS_URL, namespace=redis_ns, config=cfg, spool_path=spool)
    await replica.open()  # replays the spool
    assert spool.read_text() == ""
    for store in (reader, replica):
        assert await store.list_state("task") == {"s1/t1": ended}
        assert await store.list_state("note") == {"new": {"n": 1}}
    await reader.aclose()
    await replica.aclose()


@pytest.mark.real_asyncio
async def test_r2_6_a_process_reads_back_the_state_it_spooled(
    redis_ns: str, tmp_path: Path,
) -> None:
    """The process that spooled a write reads it back once Redis answers again, before
    (or by) replaying it -- not Redis's older record."""
    with closing(TcpProxy()) as proxy:
        a = RedisStore(proxy.url, namespace=redis_ns, spool_path=tmp_path / "sp",
                       config=DistributedConfig(socket_timeout_s=0.5))
        await a.open()
        await a.put_state("task", "s1/t1", {"status": "running"})
        proxy.cut()
        await a.put_state("task", "s1/t1", {"status": "failed"})
        assert len(a.spool) == 1
        proxy.restore()
        assert await a.get_state("task", "s1/t1") == {"status": "failed"}
        assert await a.list_state("task") == {"s1/t1": {"status": "failed"}}
        await a.aclose()
