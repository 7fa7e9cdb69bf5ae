"""A killed process loses no recorded usage (R1.5, R2.6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from scheduler import Orchestrator, TaskSpec, VibeConfig
from scheduler.budget import Tracker as Tracker
from scheduler.core import FixedWallClock
from scheduler.store import SqliteStore
from scheduler.testing import FRIDAY, run_real

WRITER = textwrap.dedent(
    """
    import sys, anyio
    from scheduler import Usage, UsageEvent
    from scheduler.store import SqliteStore

    async def main(path):
        store = SqliteStore(path)
        await store.open()
        n = 0
        while True:
            n += 1
            ev = UsageEvent(event_id=f"e{n}", task_id=f"t{n % 7}", session_id="killed",
                            day="2026-11-27", at=float(n), model="sonnet",
                            usage=Usage(100, 10), cost_usd=0.001)
            await store.record(ev)
            print(ev.event_id, flush=True)

    anyio.run(main, sys.argv[1])
    """
)


def test_r1_5_sigkill_mid_run_loses_no_recorded_usage(tmp_path: Path) -> None:
    """R1.5/R2.6: every event the killed process had recorded is in SQLite; the day resumes."""
    db = tmp_path / "vibe.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stdout is not None
    acked = []
    for line in proc.stdout:
        acked.append(line.strip())
        if len(acked) >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    run_real(_check_after_kill, db, acked)


async def _check_after_kill(db: Path, acked: list[str]) -> None:
    store = SqliteStore(db)
    await store.open()
    ids = {e.event_id for e in await store.events()}
    assert set(acked) <= ids  # everything acknowledged before the kill is there
    day = await store.totals("day:2026-11-27")
    assert day.tokens == 110 * len(ids)

    tr = Tracker(store, VibeConfig(), session_id="after-restart", wall=FixedWallClock(FRIDAY))
    await tr.open()
    assert tr.day_scope().totals.tokens == day.tokens
    assert tr.day_scope().totals.cost_usd == pytest.approx(0.001 * len(ids))
    await store.aclose()


IN_FLIGHT = textwrap.dedent(
    """
    import sys, anyio
    from scheduler import Completion, TaskSpec, Usage, VibeConfig
    from scheduler.testing import build_orchestrator

    class Provider:
        calls = 0
        async def complete(self, request):
            Provider.calls += 1
            if Provider.calls > 4:  # the provider never answers: calls stay in flight
                print("in-flight", request.task_id, flush=True)
                await anyio.sleep_forever()
            await anyio.sleep(0.01)
            return Completion("ok", Usage(100, 50), request.model)
        async def aclose(self):
            return None

    class Agent:
        async def run(self, ctx):
            for _ in range(5):
                await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=300,
                                       model="sonnet")

    async def main(state):
        config = VibeConfig(state_dir=state, store="sqlite", session_id="killed")
        orch = build_orchestrator({"a": Agent}, config=config, provider=Provider())
        await orch.run([TaskSpec(id=f"t{i}", agent="a", prompt="x") for i in range(2)])

    anyio.run(main, sys.argv[1])
    """
)


def test_r1_5_sigkill_with_calls_in_flight_charges_them_at_their_estimate(
    tmp_path: Path,
) -> None:
    """R1.5/R2.6: calls in flight when the process is killed were recorded durably before
    they went out; the next start charges each at its reserved estimate, marks it as such
    (an ``estimated_charge`` record and an ``open_call_charged`` event), and only once."""
    proc = subprocess.Popen(
        [sys.executable, "-c", IN_FLIGHT, str(tmp_path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stdout is not None
    in_flight = []
    for line in proc.stdout:
        if line.startswith("in-flight "):  # (log lines go to stdout too)
            in_flight.append(line.split()[1])
        if len(in_flight) == 2:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert sorted(in_flight) == ["t0", "t1"]
    run_real(_check_in_flight_after_kill, tmp_path)
    cli = str(Path(sys.executable).parent / "vibe-engine")
    for command in ("status", "report"):  # the charge is shown, marked as an estimate
        out = subprocess.run([cli, command, "--state-dir", str(tmp_path), "--json"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("open_call_charged") == 2, (command, out.stdout)


async def _check_in_flight_after_kill(state: Path) -> None:
    from scheduler.testing import ScriptedProvider, build_orchestrator

    store = SqliteStore(state / "vibe.db")
    await store.open()
    open_calls = await store.list_state("open_call")
    assert len(open_calls) == 2  # one per task, written before the call went out
    rows = store._conn.execute("SELECT count(*) FROM open_calls").fetchone()[0]
    assert rows == 2  # each a row of its own table (#22), not a JSON state record
    paid = await store.totals("day:2026-11-27")
    assert paid.tokens == 4 * 150  # the four answered calls
    estimate = sum(c["prompt_tokens"] + c["output_tokens"] for c in open_calls.values())
    await store.aclose()

    class Idle:
        async def run(self, ctx: object) -> None:
            await anyio.sleep(0.5)

    def orchestrator(session: str) -> Orchestrator:
        config = VibeConfig(state_dir=state, store="sqlite", session_id=session)
        later = FixedWallClock(datetime(2026, 11, 27, 13, 0, tzinfo=UTC))  # after the kill
        return build_orchestrator({"idle": Idle}, config=config, provider=ScriptedProvider(),
                                  wall=later)

    orch = orchestrator("after")
    await orch.run([TaskSpec(id="next", agent="idle", prompt="x")])
    charged = [e for e in orch.bus.history if e.name == "open_call_charged"]
    assert sorted(str(e.task_id) for e in charged) == ["t0", "t1"]
    again = orchestrator("again")  # a second start charges nothing twice
    await again.run([TaskSpec(id="next2", agent="idle", prompt="x")])
    assert [e for e in again.bus.history if e.name == "open_call_charged"] == []

    store = SqliteStore(state / "vibe.db")
    await store.open()
    day = await store.totals("day:2026-11-27")
    assert day.tokens == paid.tokens + estimate  # never less than what may have been spent
    assert (await store.totals("session:killed")).tokens == day.tokens
    assert await store.list_state("open_call") == {}
    marked = await store.list_state("estimated_charge")
    assert sorted(m["task_id"] for m in marked.values()) == ["t0", "t1"]
    assert all(m["tokens"] > 300 for m in marked.values())  # prompt estimate + max_tokens
    await store.aclose()
