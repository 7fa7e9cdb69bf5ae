"""R1.5: a replica killed mid-call is charged by the replicas still running, not only at
the next start.

Several processes share one store.  One of them is SIGKILLed while a call is in flight
(its ``open_call`` record stays); the others keep running for days.  The killed call --
which the provider may have charged -- must reach the shared day total within the
recovery period, once, however many live trackers recover it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import structlog

from scheduler import TaskSpec, VibeConfig
from scheduler.budget import Tracker
from scheduler.core import EventBus, FixedWallClock
from scheduler.runtime._recovery import RECOVER_EVERY_S, open_call_recovery
from scheduler.store import SqliteStore, Store
from scheduler.store._redis import RedisStore
from scheduler.testing import FRIDAY, build_orchestrator, run_real, run_virtual
from tests._redis_helpers import REDIS_URL

ESTIMATE = 1_000 + 234  # prompt + output tokens of the killed call
DAY_SCOPE = f"day:{FRIDAY.isoformat()}"

#: A replica that opens one call (its record written, as before any model call) and
#: hangs in it until killed.  argv: "sqlite" PATH, or "redis" NAMESPACE SPOOL; then,
#: optionally, the host name its records give.
KILLED = textwrap.dedent(
    """
    import sys, anyio
    from scheduler.budget import TaskProfile, Tracker
    from scheduler.config import Limits, VibeConfig
    from scheduler.core import FixedWallClock
    from scheduler.store import SqliteStore
    from scheduler.store._redis import RedisStore
    from scheduler.testing import FRIDAY

    async def main(kind, where, spool):
        store = (SqliteStore(where) if kind == "sqlite"
                 else RedisStore(%r, namespace=where, spool_path=spool))
        await store.open()
        tracker = Tracker(store, VibeConfig(), session_id="killed",
                          wall=FixedWallClock(FRIDAY))
        await tracker.open()
        profile = TaskProfile("code_modification", "moderate", Limits(), False, False)
        await tracker.start_task("t", profile, agent="a")
        res = await tracker.reserve_shared("t", model="sonnet", tokens=%d, cost_usd=0.01)
        await tracker.open_call(res, prompt_tokens=1000, output_tokens=234)
        print("open", flush=True)
        await anyio.sleep_forever()

    if len(sys.argv) > 4:  # a replica on another host: its records name that host
        import socket
        socket.gethostname = lambda: sys.argv[4]
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
    """
) % (REDIS_URL, ESTIMATE)


@contextmanager
def killed_replica(*args: str) -> Iterator[subprocess.Popen[str]]:
    """The replica, running with its call open; the body kills it (``kill``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, *args], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "open":
                break
        else:
            raise AssertionError(f"the replica ended before opening its call: {proc.wait()}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


async def _estimates(store: Store) -> list[str]:
    return [e.event_id for e in await store.events() if e.event_id.endswith(":estimate")]


# -- the runtime path: an orchestrator that keeps running -----------------------------


@asynccontextmanager
async def ran_one_task(state: Path, agent: Callable[[], Any]
                       ) -> AsyncIterator[tuple[list[float], list[float], SqliteStore]]:
    """An orchestrator (session ``live``, the SQLite store in ``state``) runs one task of
    ``agent``; then the times it announced an open call charged, the times of all its
    events, and its store opened again (closed after the block)."""
    orch = build_orchestrator({"a": agent}, config=VibeConfig(
        state_dir=state, store="sqlite", session_id="live"))
    await orch.run([TaskSpec(id="w", agent="a", prompt="x")])
    store = SqliteStore(state / "vibe.db")
    await store.open()
    try:
        yield ([e.at for e in orch.bus.history if e.name == "open_call_charged"],
               [e.at for e in orch.bus.history], store)
    finally:
        await store.aclose()


class _Waits:
    """An agent that kills the other replica, then keeps running for three minutes."""

    proc: subprocess.Popen[str]
    killed_at = 0.0

    async def run(self, ctx: object) -> None:
        kill(_Waits.proc)
        _Waits.killed_at = anyio.current_time()
        await anyio.sleep(3 * RECOVER_EVERY_S)


def test_r1_5_a_running_orchestrator_charges_a_killed_replicas_open_call_within_a_minute(
        tmp_path: Path) -> None:
    """R1.5: the killed replica's call is charged at its estimate by the orchestrator
    still running -- within ``RECOVER_EVERY_S`` of virtual time after the kill, once,
    announced -- while the run goes on, not at the next start."""
    state = tmp_path / "state"
    state.mkdir()
    db = state / "vibe.db"

    async def main() -> tuple[list[float], list[str], int, float]:
        async with ran_one_task(state, _Waits) as (charged, times, store):
            return (charged, await _estimates(store), (await store.totals(DAY_SCOPE)).tokens,
                    max(times))

    with killed_replica("sqlite", str(db)) as proc:
        _Waits.proc = proc
        charged, estimates, day, ended = run_virtual(main)
    assert len(charged) == 1 and len(estimates) == 1
    assert _Waits.killed_at < charged[0] <= _Waits.killed_at + RECOVER_EVERY_S
    assert charged[0] < ended  # while the run went on
    assert day == ESTIMATE


# -- two live trackers recovering at once ---------------------------------------------


async def _two_live_trackers(stores: list[Store], proc: subprocess.Popen[str]
                             ) -> tuple[list[int], list[int], list[str], int]:
    trackers = [Tracker(s, VibeConfig(), session_id=f"live{i}", wall=FixedWallClock(FRIDAY))
                for i, s in enumerate(stores)]
    for s, tr in zip(stores, trackers, strict=True):
        await s.open()
        await tr.open()
    before = [len(await tr.recover_open_calls()) for tr in trackers]  # still running
    kill(proc)
    charged: list[int] = []

    async def recover(tr: Tracker) -> None:
        charged.append(len(await tr.recover_open_calls()))

    async with anyio.create_task_group() as tg:
        for tr in trackers:
            tg.start_soon(recover, tr)
    for tr in trackers:
        charged.append(len(await tr.recover_open_calls()))  # a later round: nothing left
    local = sum(tr.day_scope().totals.tokens for tr in trackers)
    estimates = await _estimates(stores[0])
    day = (await stores[0].totals(DAY_SCOPE)).tokens
    for s in stores:
        await s.aclose()
    assert local == ESTIMATE  # the tracker that charged it counts it in its day
    return before, charged, estimates, day


def test_r1_5_two_live_trackers_on_sqlite_charge_a_killed_replicas_call_once(
        tmp_path: Path) -> None:
    db = tmp_path / "vibe.db"
    with killed_replica("sqlite", str(db)) as proc:
        before, charged, estimates, day = run_virtual(
            _two_live_trackers, [SqliteStore(db), SqliteStore(db)], proc)
    assert before == [0, 0]  # a live replica's call is never charged at its estimate
    assert sorted(charged) == [0, 0, 0, 1]
    assert len(estimates) == 1 and day == ESTIMATE


def test_r1_5_two_live_trackers_on_redis_charge_a_killed_replicas_call_once(
        tmp_path: Path, redis_ns: str) -> None:
    with killed_replica("redis", redis_ns, str(tmp_path / "killed-spool")) as proc:
        stores: list[Store] = [
            RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / f"spool{i}")
            for i in range(2)]
        before, charged, estimates, day = run_real(_two_live_trackers, stores, proc)
    assert before == [0, 0]
    assert sorted(charged) == [0, 0, 0, 1]
    assert len(estimates) == 1 and day == ESTIMATE


def test_r1_5_recovery_outlives_a_store_that_cannot_answer(tmp_path: Path) -> None:
    """R1.5: a round that cannot read the store (a Redis outage, a closed file) is logged
    and the next round tries again; the run is never ended by it."""

    async def main() -> list[str]:
        store = SqliteStore(tmp_path / "vibe.db")
        await store.open()
        tracker = Tracker(store, VibeConfig(), session_id="live", wall=FixedWallClock(FRIDAY))
        await tracker.open()
        await store.aclose()  # every read now raises StoreError
        bus = EventBus(anyio.current_time)
        with structlog.testing.capture_logs() as logs:
            with anyio.move_on_after(2.5 * RECOVER_EVERY_S):
                await open_call_recovery(tracker, bus)()
        return [str(log["event"]) for log in logs]

    assert run_virtual(main).count("open_call_recovery_failed") == 2
