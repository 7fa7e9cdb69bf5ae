"""A killed process loses no recorded usage (R1.5, R2.6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scheduler import VibeConfig
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
