"""R1.5/R2.6 crash restart on a shared store: a session whose orchestrator was killed is
interrupted, not running.  ``vibe-engine run`` from another state directory with its id
is refused (one line, exit 2, nothing written) instead of joining it as if it were alive,
and ``vibe-engine resume`` continues it; a live one is still joined (docs/scale-out.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from scheduler.cli._sessions import check_new_session
from scheduler.config import config_from_dict
from scheduler.core import SessionError, StoreError, process_gone, process_start, this_host
from scheduler.store import SessionRecord, SqliteStore
from tests._cli_helpers import assert_one_line_exit_2, cli

BIN = Path(sys.executable).parent / "vibe-engine"


def _config(tmp_path: Path, name: str, time_scale: float) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'state_dir = "st-{name}"\nstore = "sqlite://{tmp_path / "shared.db"}"\n'
        f'session_id = "nightly"\n[provider.simulated]\ntime_scale = {time_scale}\n'
        'failure_rate = { haiku = 0.0, sonnet = 0.0, opus = 0.0 }\n'
        f'[[tasks]]\nid = "q-{name}"\nagent = "qa"\nprompt = "Where is the config loaded?"\n')
    return path


async def _session(db: Path) -> SessionRecord | None:
    store = SqliteStore(db)
    await store.open()
    try:
        found = await store.get_state("session", "nightly")
    finally:
        await store.aclose()
    return SessionRecord.from_dict(found) if found else None


async def _running(db: Path, proc: subprocess.Popen[bytes]) -> SessionRecord:
    """The session record once the orchestrator wrote it (real time: a real process)."""
    with anyio.fail_after(60):
        while True:
            assert proc.poll() is None, "the orchestrator ended before it was killed"
            record = None
            if await anyio.Path(db).exists():
                with contextlib.suppress(StoreError):  # the store is still being created
                    record = await _session(db)
            if record is not None and record.state == "running":
                return record
            await anyio.sleep(0.05)


@pytest.mark.slow
def test_r1_5_a_killed_orchestrators_session_is_refused_to_join_and_resumes(
    tmp_path: Path,
) -> None:
    _config(tmp_path, "a", time_scale=10)  # its one call takes seconds: killed mid-call
    _config(tmp_path, "b", time_scale=0.01)
    db = tmp_path / "shared.db"
    proc = subprocess.Popen([str(BIN), "run", "a.toml", "--no-live", "--log-level", "error"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        record = anyio.run(_running, db, proc)
        assert (record.host, record.pid) == (this_host(), proc.pid) and record.proc_start
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    line = assert_one_line_exit_2(cli(["run", "b.toml", "--no-live"], tmp_path),
                                  "nightly", "is gone", f"pid {record.pid}",
                                  "vibe-engine resume nightly", "st-a")
    assert "--store" in line
    assert not (tmp_path / "st-b").exists()
    assert anyio.run(_session, db) == record  # not joined: the record is as A left it
    resumed = cli(["resume", "nightly", "--state-dir", "st-a", "--store", f"sqlite://{db}",
                   "--no-live", "--log-level", "error"], tmp_path)
    assert resumed.code == 0, resumed
    stored = anyio.run(_session, db)
    assert stored is not None and stored.state == "completed"


def _record(tmp_path: Path, **fields: object) -> None:
    async def write() -> None:
        store = SqliteStore(tmp_path / "shared.db")
        await store.open()
        rec = SessionRecord("nightly", state="running", state_dir=str(tmp_path / "other"),
                            **fields)  # type: ignore[arg-type]
        await store.put_state("session", "nightly", rec.to_dict())
        await store.aclose()

    anyio.run(write)


def _check(tmp_path: Path) -> None:
    check_new_session(config_from_dict({
        "state_dir": str(tmp_path / "here"), "store": f"sqlite://{tmp_path / 'shared.db'}",
        "session_id": "nightly"}))


def test_r1_5_a_running_record_whose_pid_was_reused_is_not_joined(tmp_path: Path) -> None:
    """The record's pid runs, but a process started at another moment: the pid was
    given to another process after the orchestrator died."""
    pid = os.getpid()
    _record(tmp_path, host=this_host(), pid=pid, proc_start=process_start(pid) + "0")
    with pytest.raises(SessionError, match="is gone"):
        _check(tmp_path)
    _record(tmp_path, host=this_host(), pid=pid, proc_start=process_start(pid))
    _check(tmp_path)  # that very process: alive, joined


@pytest.mark.parametrize("fields", [
    {}, {"pid": 1 << 22}, {"host": "another-host", "pid": 1 << 22, "proc_start": "x/1"},
])
def test_r1_5_records_that_cannot_tell_are_still_joined(tmp_path: Path,
                                                        fields: dict[str, object]) -> None:
    """A record written before host and pid were kept, or by another host's process
    (whose pid says nothing here), is taken as running: joined as before."""
    _record(tmp_path, **fields)
    _check(tmp_path)


def test_r1_5_a_killed_process_not_yet_reaped_is_gone() -> None:
    """SIGKILLed, its parent not having waited for it yet: a zombie still answers
    ``kill(pid, 0)``, but it runs no more."""
    proc = subprocess.Popen(["sleep", "60"])
    start = process_start(proc.pid)
    assert start and not process_gone(this_host(), proc.pid, start)
    os.kill(proc.pid, signal.SIGKILL)

    async def gone() -> None:
        with anyio.fail_after(10):
            while not process_gone(this_host(), proc.pid, start):  # noqa: ASYNC110
                await anyio.sleep(0.01)

    try:
        anyio.run(gone)
        assert proc.returncode is None  # not reaped: a zombie
    finally:
        proc.wait()
    assert process_gone(this_host(), proc.pid, start)


@pytest.mark.slow
def test_r1_5_a_session_whose_last_joiner_was_killed_is_joined_while_another_runs(
    tmp_path: Path,
) -> None:
    """R1.5: A and B run one session; B (the last to join, the one its record names) is
    killed.  A still runs it, so it is not interrupted: a third orchestrator joins it."""
    _config(tmp_path, "a", time_scale=200)  # runs on while B is killed and C joins
    _config(tmp_path, "b", time_scale=200)
    _config(tmp_path, "c", time_scale=0.01)
    db = tmp_path / "shared.db"
    procs = []
    try:
        for name in ("a", "b"):
            procs.append(subprocess.Popen(
                [str(BIN), "run", f"{name}.toml", "--no-live", "--log-level", "error"],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            record = anyio.run(_running, db, procs[-1])
            while record.pid != procs[-1].pid:  # B's begin is not yet written
                record = anyio.run(_running, db, procs[-1])
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        joined = cli(["run", "c.toml", "--no-live", "--log-level", "error"], tmp_path)
        assert joined.code == 0, joined
        assert procs[0].poll() is None  # A ran throughout
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_r1_5_a_record_from_before_members_keeps_its_orchestrator_as_one(
    tmp_path: Path,
) -> None:
    """R1.5: a running record written before records listed their members names one
    orchestrator (a live process stands in for it).  B joins, then is killed: the session
    still runs there, so it is joined; once that one is gone too, it is refused."""
    _config(tmp_path, "b", time_scale=200)
    db = tmp_path / "shared.db"
    earlier = subprocess.Popen(["sleep", "120"])
    joiner = None
    try:
        _record(tmp_path, host=this_host(), pid=earlier.pid,
                proc_start=process_start(earlier.pid))
        joiner = subprocess.Popen(
            [str(BIN), "run", "b.toml", "--no-live", "--log-level", "error"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        record = anyio.run(_running, db, joiner)
        while record.pid != joiner.pid:  # B's begin is not yet written
            record = anyio.run(_running, db, joiner)
        joiner.kill()
        joiner.wait()
        _check(tmp_path)  # the earlier orchestrator still runs it: joined
        earlier.kill()
        earlier.wait()
        with pytest.raises(SessionError, match="is gone"):
            _check(tmp_path)
    finally:
        for proc in (earlier, joiner):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_r1_5_an_orchestrator_ending_leaves_the_session_running_for_another(
    tmp_path: Path,
) -> None:
    """R1.5: C joins a session another orchestrator (a live process stands in for it)
    runs, and finishes first: the session still runs there, so C's end keeps it running,
    with that member and every task, and D can join it.  Once that one is gone too, a
    new ``run`` is refused (before: C's end marked it completed, refusing D)."""
    for name in ("c", "d", "e"):
        _config(tmp_path, name, time_scale=0.01)
    other = subprocess.Popen(["sleep", "120"])
    member = [this_host(), other.pid, process_start(other.pid)]
    try:
        _record(tmp_path, host=member[0], pid=other.pid, proc_start=member[2],
                members=[member], tasks=["q-a"])
        assert cli(["run", "c.toml", "--no-live", "--log-level", "error"], tmp_path).code == 0
        record = anyio.run(_session, tmp_path / "shared.db")
        assert record is not None and record.state == "running"
        assert record.members == [member] and {"q-a", "q-c"} <= set(record.tasks)
        assert cli(["run", "d.toml", "--no-live", "--log-level", "error"], tmp_path).code == 0
    finally:
        other.kill()
        other.wait()
    assert_one_line_exit_2(cli(["run", "e.toml", "--no-live"], tmp_path), "nightly", "is gone")
