"""R1.5: a replica killed on *another host* (another pod, another machine) is charged too.

The calls a killed process left open are charged at their estimate by the processes
still running on the store.  Same-host deaths are told by the pid; a replica on another
host (every pod of a Kubernetes deployment has its own host name) only by its *beat*:
each tracker bumps a counter in the store every recovery round, and a counter that
stays unchanged for ``BEAT_STALE_S`` marks its process dead.  A container restarted
with the same pid (pid 1) on the same host name is told apart by its run.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import pytest

from scheduler import VibeConfig
from scheduler.budget import TaskProfile, Tracker
from scheduler.budget._open_calls import BEAT, BEAT_STALE_S, OPEN
from scheduler.config import Limits
from scheduler.core import FixedWallClock
from scheduler.runtime._recovery import RECOVER_EVERY_S
from scheduler.store import SqliteStore, Store
from scheduler.testing import FRIDAY, run_virtual
from tests.test_open_call_recovery import (
    ESTIMATE,
    _estimates,
    kill,
    killed_replica,
    ran_one_task,
)

OTHER_HOST = "pod-b-7f9c"


def _tracker(store: Store, session: str) -> Tracker:
    return Tracker(store, VibeConfig(), session_id=session, wall=FixedWallClock(FRIDAY))


def _on_other_host(monkeypatch: pytest.MonkeyPatch, store: Store) -> Tracker:
    """A tracker whose records say it runs on :data:`OTHER_HOST` (its host is read once,
    when it is made)."""
    with monkeypatch.context() as m:
        m.setattr(socket, "gethostname", lambda: OTHER_HOST)
        return _tracker(store, "pod-b")


async def _open_one_call(tracker: Tracker) -> None:
    profile = TaskProfile("code_modification", "moderate", Limits(), False, False)
    await tracker.start_task("t", profile, agent="a")
    res = await tracker.reserve_shared("t", model="sonnet", tokens=ESTIMATE, cost_usd=0.01)
    await tracker.open_call(res, prompt_tokens=1000, output_tokens=234)


def test_r1_5_a_live_replica_on_another_host_is_never_charged_a_dead_one_is_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R1.5: while the other-host replica beats, its open call is left to it, however long
    the call lasts; once its beat stops, the call is charged once, after ``BEAT_STALE_S``
    and within one more round, and its beat record goes."""
    db = tmp_path / "vibe.db"

    async def main() -> tuple[list[int], float, list[str], list[str]]:
        live_store, other_store = SqliteStore(db), SqliteStore(db)
        await live_store.open()
        await other_store.open()
        live, other = _tracker(live_store, "live"), _on_other_host(monkeypatch, other_store)
        await other.open()
        await live.open()
        await _open_one_call(other)
        rounds: list[int] = []
        for _ in range(10):  # 10 minutes of a call in flight on a beating replica
            await anyio.sleep(RECOVER_EVERY_S)
            await other.recover_open_calls()  # its own round: its beat
            rounds.append(len(await live.recover_open_calls()))
        stopped = anyio.current_time()  # killed: no more beats
        while not any(rounds[10:]) and len(rounds) < 20:
            await anyio.sleep(RECOVER_EVERY_S)
            rounds.append(len(await live.recover_open_calls()))
        waited = anyio.current_time() - stopped
        beats = sorted(await live_store.list_state(BEAT))
        estimates = await _estimates(live_store)
        await live_store.aclose()
        await other_store.aclose()
        return rounds, waited, beats, estimates

    rounds, waited, beats, estimates = run_virtual(main)
    assert rounds[:10] == [0] * 10 and sum(rounds) == 1
    assert BEAT_STALE_S <= waited <= BEAT_STALE_S + RECOVER_EVERY_S
    assert len(estimates) == 1
    # the dead replica's beat was dropped; the live one's stays (it never closed)
    assert len(beats) == 1 and beats[0].startswith(f"{socket.gethostname()}:{os.getpid()}:")


class _Waits:
    """Kills the other-host replica, then keeps the run going for five rounds."""

    proc: object

    async def run(self, ctx: object) -> None:
        kill(_Waits.proc)  # type: ignore[arg-type]
        await anyio.sleep(5 * RECOVER_EVERY_S)


def test_r1_5_a_running_orchestrator_charges_a_replica_killed_on_another_host(
        tmp_path: Path) -> None:
    """R1.5, the runtime path: a replica on another host (its records name another host
    name, its pid means nothing here) is SIGKILLed mid-call; the orchestrator still
    running charges the call at its estimate once its beat went stale, while it runs."""
    state = tmp_path / "state"
    state.mkdir()
    db = state / "vibe.db"

    async def main() -> tuple[list[float], list[str], int, list[str]]:
        async with ran_one_task(state, _Waits) as (charged, _, store):
            day = (await store.totals(f"day:{FRIDAY.isoformat()}")).tokens
            return charged, await _estimates(store), day, sorted(await store.list_state(BEAT))

    with killed_replica("sqlite", str(db), "", OTHER_HOST) as proc:
        _Waits.proc = proc
        charged, estimates, day, beats = run_virtual(main)
    assert len(charged) == 1 and len(estimates) == 1 and day == ESTIMATE
    assert BEAT_STALE_S <= charged[0] <= BEAT_STALE_S + RECOVER_EVERY_S
    assert beats == []  # the dead replica's beat was dropped, the live one's at its close


def test_r1_5_a_restarted_process_with_the_same_pid_charges_the_earlier_runs_call(
        tmp_path: Path) -> None:
    """R1.5: a container restarts with the same host name and pid (pid 1): the record
    its earlier process left names this pid, but a run not alive here -- charged at the
    start.  A record of a run alive in this process is not."""
    db = tmp_path / "vibe.db"

    async def main() -> tuple[int, int, list[str]]:
        store = SqliteStore(db)
        await store.open()
        alive = _tracker(store, "alive")
        await alive.open()
        await _open_one_call(alive)
        record = next(iter((await store.list_state(OPEN)).values()))
        await store.put_state(OPEN, "earlier:1", {  # the earlier process's, same pid
            **record, "event_id": "earlier:1", "run": "dead0000", "session_id": "earlier"})
        restarted = _tracker(store, "restarted")
        charged = len(await restarted.open())
        again = len(await restarted.recover_open_calls())
        left = sorted(await store.list_state(OPEN))
        await store.aclose()
        return charged, again, left

    charged, again, left = run_virtual(main)
    assert (charged, again) == (1, 0)
    assert len(left) == 1 and left[0] != "earlier:1"  # the live run's call stays open
