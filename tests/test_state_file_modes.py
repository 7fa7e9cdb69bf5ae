"""State files are not world-readable, whatever the umask: the SQLite store (and its WAL),
``status.json``, each task's ``usage.json`` and the Redis spool are 0600, the folders
the runtime creates 0700."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from agents.builtin import QuestionAnswerAgent
from scheduler import TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.core import umask_keeps_owner, write_private
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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277])
def test_r2_6_umask_keeps_owner_reads_the_process_umask(umask: int) -> None:
    """R2.6: whether a file created 0600 gets that mode without a chmod is read from the
    process's umask (/proc/self/status) -- without setting it, which would race with
    other threads creating files."""
    old = os.umask(umask)
    try:
        assert umask_keeps_owner() is (umask & 0o700 == 0)
        assert os.umask(umask) == umask  # only read, never changed
    finally:
        os.umask(old)


def test_r2_6_write_private_never_keeps_a_stale_temporary_files_mode(tmp_path: Path) -> None:
    """R2.6: a temporary file a killed process left under the name a write uses (same pid
    and thread) is replaced, not reused with its wider mode, even without the chmod."""
    path = tmp_path / "usage.json"
    stale = tmp_path / f".usage.json.{os.getpid()}.{threading.get_ident()}.tmp"
    stale.write_text("half")
    stale.chmod(0o644)
    write_private(path, '{"usage": {}}', fix_mode=False)
    assert path.read_text() == '{"usage": {}}' and mode(path) == 0o600
    assert not stale.exists()


@pytest.mark.real_asyncio  # the end-of-task files' worker-thread hop
@pytest.mark.parametrize("umask", [0o077, 0o277])
async def test_r2_6_task_end_files_are_private_with_no_mode_fixing_calls_when_not_needed(
    tmp_path: Path, make_orchestrator: OrchestratorFactory, monkeypatch: pytest.MonkeyPatch,
    umask: int,
) -> None:
    """R2.6: a task's folder and files are 0700/0600 at its end.  When the umask keeps the
    owner's bits (077) the modes given at creation are the files' modes: the end of a task
    in a new folder makes no chmod, no fchmod and no removal of a ``result.json`` (a new
    folder holds none); a umask taking the owner's bits (277) gets them set back."""
    calls: list[str] = []  # the calls on a task's folder or files
    for name in ("chmod", "fchmod", "unlink"):
        monkeypatch.setattr(os, name, _logging_call(name, getattr(os, name), calls))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = VibeConfig.model_validate({"state_dir": state, "store": "sqlite",
                                        "session_id": "s1"})
    orch = make_orchestrator({"qa": QuestionAnswerAgent}, config=config)
    old = os.umask(umask)
    try:
        report = await orch.run([TaskSpec(id=f"q{i}", agent="qa", prompt="What is a lease?")
                                 for i in range(3)])
    finally:
        os.umask(old)
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    for i in range(3):
        folder = state / "tasks" / f"q{i}"
        assert mode(folder) == 0o700
        assert mode(folder / "usage.json") == 0o600
        assert mode(folder / "result.json") == 0o600
    if umask == 0o077:
        assert calls == [], calls
    else:
        assert calls.count("chmod") == 3 and calls.count("fchmod") == 6, calls


def _logging_call(name: str, real: Any, calls: list[str]) -> Any:
    def call(target: Any, *args: Any, **kwargs: Any) -> Any:
        path = os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else target
        if "/tasks/" in str(path):
            calls.append(name)
        return real(target, *args, **kwargs)
    return call
