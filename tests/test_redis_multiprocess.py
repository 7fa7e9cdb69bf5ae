"""Three orchestrator processes on one Redis: one session budget, one global pool.

Real processes and a real Redis, so these tests run in real time (a few
seconds, with short slice and hold TTLs); everything else about leases and
failure modes is tested on a virtual clock in test_quota_slices.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
import redis

from tests._redis_helpers import (
    REDIS_URL,
    TcpProxy,
    delete_namespace,
    new_namespace,
    redis_or_skip,
    run_asyncio,
)

SCRIPT = Path(__file__).with_name("_redis_orchestrator.py")
ROOT = Path(__file__).resolve().parent.parent
GRACE = 5_000  # OverdraftConfig.tokens: one grace per orchestrator (R3.5)
pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def client_ns() -> Iterator[tuple[redis.Redis, str]]:
    client = redis_or_skip()
    ns = new_namespace()
    try:
        yield client, ns
    finally:
        delete_namespace(client, ns)
        client.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line torn by SIGKILL
            out.append(json.loads(line))
    return out


class Fleet:
    """Orchestrator subprocesses and their JSON-lines logs."""

    def __init__(self, tmp: Path, url: str, ns: str, **opts: Any) -> None:
        self.tmp, self.url, self.ns, self.opts = tmp, url, ns, opts
        self.procs: dict[str, anyio.abc.Process] = {}
        self.files: list[IO[bytes]] = []

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.jsonl"

    async def start(self, name: str) -> None:
        cmd = [sys.executable, str(SCRIPT), "--url", self.url, "--namespace", self.ns,
               "--name", name, "--log", str(self.log(name))]
        for k, v in self.opts.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        err = (self.tmp / f"{name}.err").open("wb")  # closed in kill_all
        self.files.append(err)
        self.procs[name] = await anyio.open_process(cmd, env=env, stdout=err, stderr=err)

    async def wait_for(self, name: str, kind: str) -> dict[str, Any]:
        with anyio.fail_after(15.0):
            while True:
                recs = [r for r in read_log(self.log(name)) if r["kind"] == kind]
                if recs:
                    return recs[0]
                await anyio.sleep(0.02)

    async def wait_exit(self, name: str) -> int:
        with anyio.fail_after(20.0):
            return await self.procs[name].wait()

    async def kill_all(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                p.kill()
            await p.wait()
            await p.aclose()
        for f in self.files:
            f.close()


def window_share(recs: list[dict[str, Any]], t0: float, t1: float) -> int:
    return sum(r["tokens"] for r in recs if r["kind"] == "grant" and t0 <= r["t"] < t1)


def test_r1_2_r5_3_three_orchestrators_share_budget_and_pool(
    client_ns: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    """3 processes × 30 agents, one session budget and one tokens-per-minute pool:
    spend ≤ budget + one grace per orchestrator; each gets its fair third of the pool
    (±10 %) while all are backlogged; SIGKILL one: its slice returns after expiry, the
    others finish the budget, and every event it had recorded is in Redis."""
    client, ns = client_ns
    budget, capacity, ttl, renew = 120_000, 1_200_000, 1.0, 0.25
    fleet = Fleet(tmp_path, REDIS_URL, ns, agents=30, budget=budget, capacity=capacity,
                  ttl=ttl, renew=renew, hold_ttl=2.0)
    names = ["o1", "o2", "o3"]

    async def main() -> tuple[float, float, float]:
        try:
            for n in names:
                await fleet.start(n)
            started = [await fleet.wait_for(n, "started") for n in names]
            t_all = max(r["t"] for r in started)
            await anyio.sleep(max(t_all + 4.5 - time.perf_counter(), 0))
            t_kill = time.perf_counter()
            fleet.procs["o3"].send_signal(signal.SIGKILL)
            for n in names[:2]:
                assert await fleet.wait_exit(n) == 0, (tmp_path / f"{n}.err").read_text()
            return t_all, t_kill, time.perf_counter()
        finally:
            await fleet.kill_all()

    t_all, t_kill, _ = run_asyncio(main)
    logs = {n: read_log(fleet.log(n)) for n in names}

    # budget: every process's usage, as Redis recorded it
    spent = int(client.hget(f"vibe:{{{ns}}}:tot:session:shared", "tokens") or 0)
    assert spent <= budget + len(names) * GRACE
    assert spent >= budget - 500  # the budget, not something else, stopped the agents

    # fairness while all three were backlogged (after one TTL to converge)
    t0, t1 = t_all + 1.0, t_kill
    shares = {n: window_share(logs[n], t0, t1) for n in names}
    total = sum(shares.values())
    for got in shares.values():
        assert abs(got / total - 1 / 3) <= 0.1 / 3, shares

    # the killed orchestrator's slice returned to the others after expiry
    for n in names[:2]:
        after = [r for r in logs[n] if r["kind"] == "slice" and r["t"] > t_kill]
        assert any(r["amount"] == capacity // 2 for r in after), after
        first = next(r for r in after if r["amount"] == capacity // 2)
        assert first["t"] - t_kill <= ttl + 2 * renew + 0.5
    assert set(client.hkeys(f"vibe:{{{ns}}}:pool:tpm:grant")) <= {b"o1", b"o2"}

    # every usage event o3 had recorded before SIGKILL is in Redis
    recorded = [r["id"] for r in logs["o3"] if r["kind"] == "event"]
    assert len(recorded) > 50
    stored = client.hmget(f"vibe:{{{ns}}}:events", recorded)
    assert all(v is not None for v in stored)
    all_events = sum(1 for n in names for r in logs[n] if r["kind"] == "event")
    assert client.hlen(f"vibe:{{{ns}}}:events") >= all_events


def test_connection_drop_mid_run_fail_closed_loses_no_usage(
    client_ns: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    """Connections cut mid-run (a proxy we control): fail-closed grants nothing new while
    Redis is unreachable, calls in flight finish, their usage is spooled and replayed;
    after the run every recorded event is in Redis and the totals match."""
    client, ns = client_ns
    proxy = TcpProxy()
    fleet = Fleet(tmp_path, proxy.url, ns, agents=30, budget=40_000, capacity=600_000,
                  ttl=1.0, renew=0.25, hold_ttl=5.0, call_min=0.2, call_max=0.4)

    async def main() -> tuple[float, float]:
        try:
            await fleet.start("o1")
            await fleet.wait_for("o1", "started")
            await anyio.sleep(1.0)
            proxy.cut()
            t_cut = time.perf_counter()
            await anyio.sleep(1.5)
            t_back = time.perf_counter()
            proxy.restore()
            assert await fleet.wait_exit("o1") == 0, (tmp_path / "o1.err").read_text()
            return t_cut, t_back
        finally:
            await fleet.kill_all()
            proxy.close()

    t_cut, t_back = run_asyncio(main)
    log = read_log(fleet.log("o1"))
    # fail-closed: no new grant between the cut (+ the in-flight margin) and the restore
    during = [r for r in log if r["kind"] == "grant" and t_cut + 0.1 < r["t"] < t_back]
    assert during == []
    # the slice went to 0 once the last good lease would have expired
    zero = [r for r in log if r["kind"] == "slice" and r["amount"] == 0 and r["t"] > t_cut]
    assert zero and zero[0]["t"] <= t_cut + 1.0 + 0.5
    # nothing lost: every recorded event id is in Redis, totals are their sum
    events = [r for r in log if r["kind"] == "event"]
    in_flight = [r for r in events if t_cut < r["t"] < t_back]
    assert in_flight  # calls in flight at the cut completed (their usage was spooled)
    err = (tmp_path / "o1.err").read_text()
    assert "redis_usage_spooled" in err and "redis_spool_replayed" in err
    ids = [r["id"] for r in events]
    assert all(v is not None for v in client.hmget(f"vibe:{{{ns}}}:events", ids))
    spent = int(client.hget(f"vibe:{{{ns}}}:tot:session:shared", "tokens") or 0)
    assert spent == sum(r["tokens"] for r in events)
    assert log[-1]["kind"] == "done" and log[-1]["pending"] == 0
