"""State files are not world-readable, whatever the umask: the SQLite store (and its WAL),
``status.json``, each task's ``usage.json`` and the Redis spool are 0600, the folders
the runtime creates 0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from agents.builtin import QuestionAnswerAgent
from scheduler import TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.store._spool import Spool, SpooledEvent
from tests._helpers import OrchestratorFactory


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)  # the worst case: everything the process creates is world-writable
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
async def test_state_files_are_private_whatever_the_umask(
    make_orchestrator: OrchestratorFactory, tmp_path: Path
) -> None:
    """Under umask 000 a run on the SQLite store leaves vibe.db, its WAL, status.json,
    usage.json, result.json and the orchestrator lock readable by the owner only, in 0700
    folders."""
    state = tmp_path / "state"
    stale = state / "vibe.db"
    state.mkdir(mode=0o755)
    stale.touch(mode=0o644)  # left by an older version: narrowed too
    config = VibeConfig.model_validate({
        "state_dir": state, "store": "sqlite", "session_id": "s1",
        "observe": {"status_interval_s": 0.5, "history": True}})
    orch = make_orchestrator({"qa": QuestionAnswerAgent}, config=config)
    report = await orch.run([TaskSpec(id="q1", agent="qa", prompt="What is a lease?")])
    assert report.outcomes["q1"].status == "completed"
    files = [state / "vibe.db", state / "status.json", state / "tasks" / "q1" / "usage.json"]
    files += [p for p in (state / "vibe.db-wal", state / "vibe.db-shm") if p.exists()]
    files += [p for p in (state / "orchestrator.lock", state / "tasks" / "q1" / "result.json")
              if p.exists()]
    for f in files:
        assert mode(f) == 0o600, (f, oct(mode(f)))
    for d in (state / "tasks", state / "tasks" / "q1"):
        assert mode(d) == 0o700, (d, oct(mode(d)))
    leftovers = [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.usefixtures("open_umask")
def test_redis_spool_is_private_whatever_the_umask(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "new" / "redis-spool.jsonl")
    event = UsageEvent(event_id="e1", task_id="t", session_id="s", day=str(date(2026, 11, 27)),
                       at=1.0, agent="qa", model="sonnet", usage=Usage(1, 1), cost_usd=0.0)
    spool.append(SpooledEvent(event))
    spool.append(SpooledEvent(event))
    assert mode(spool.path) == 0o600 and mode(spool.path.parent) == 0o700
    spool.drop_first(1)  # the atomic rewrite keeps it private
    assert mode(spool.path) == 0o600 and len(spool) == 1
