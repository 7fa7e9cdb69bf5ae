"""Which session ``run`` starts and ``resume`` continues, and ``run``'s exit code.

Exit codes of ``vibe-engine run`` and ``vibe-engine resume``:

* 0 -- every task completed;
* 1 -- a task failed, was stopped on its budget (saved and finished), or did not end;
* 2 -- the run could not start: bad config or arguments, no session to resume, or
  another orchestrator is using the state directory;
* 130 / 143 -- Ctrl-C / SIGTERM ended the run (its running tasks are recorded
  interrupted: ``resume`` continues them).
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from scheduler.config import DistributedConfig, VibeConfig, sqlite_file
from scheduler.core import SessionError, member_gone
from scheduler.runtime import RunReport
from scheduler.store import SessionRecord, list_sessions, open_store

EXIT_OK, EXIT_TASKS_NOT_COMPLETED, EXIT_CANNOT_START = 0, 1, 2


def exit_code(report: RunReport) -> int:
    """0 when every task completed, else 1 (see the module docstring)."""
    done = all(o.status == "completed" for o in report.outcomes.values())
    return EXIT_OK if done else EXIT_TASKS_NOT_COMPLETED


async def _sessions(store_kind: str, state_dir: Path,
                    distributed: DistributedConfig | None = None) -> list[SessionRecord]:
    # read as ``status`` reads (see :func:`_recorded`): the run resumed replays the spool
    store = open_store(store_kind, state_dir, distributed=distributed, replay_spool=False)
    await store.open()
    try:
        here = str(await anyio.Path(state_dir).resolve())
        return await list_sessions(store, state_dir=here)
    finally:
        await store.aclose()


async def _recorded(config: VibeConfig, sid: str) -> SessionRecord | None:
    """The store's record of session ``sid``, whichever state directory ran it: read as
    ``status`` reads, leaving the Redis spool to the orchestrator whose state directory
    it is (one may be running there; ``run`` refuses to start beside it later)."""
    store = open_store(config.store, config.state_dir, distributed=config.distributed,
                       replay_spool=False)
    await store.open()
    try:
        found = await store.get_state("session", sid)
    finally:
        await store.aclose()
    return SessionRecord.from_dict(found) if found else None


def check_new_session(config: VibeConfig) -> None:
    """``run`` starts a new session: a ``session_id`` set in the config that this state
    directory ran, or that has ended wherever it ran, is refused (on a shared store the
    run would otherwise carry on that session's usage and tasks); ``resume`` continues
    it.  Orchestrators sharing one *running* session from their own state directories
    (docs/scale-out.md) still join it, unless every orchestrator running it is known to
    be gone (killed on this host): that session is interrupted, ``resume`` continues it."""
    sid = config.session_id
    if sid is None or config.store == "memory":
        return
    if config.store.startswith("sqlite"):
        db = (Path(config.state_dir) / "vibe.db" if config.store == "sqlite"
              else sqlite_file(config.store))
        if db is None or not db.exists():
            return  # nothing ran here yet (and checking must not create the file)
    record = anyio.run(_recorded, config, sid)
    here = os.path.realpath(config.state_dir)
    # a running session whose orchestrator was killed (its pid gone or reused on its
    # host) is an interrupted one: joining it would carry on as if that run were alive
    crashed = record is not None and record.state == "running" and all(
        member_gone(m) for m in record.members or [
            [record.host, record.pid, record.proc_start]])
    if record is None or (record.state == "running" and record.state_dir != here
                          and not crashed):
        return
    ran_in = record.state_dir or str(config.state_dir)
    # a Redis URL may hold a password: only a SQLite file's URL is repeated
    store = "" if config.store == "sqlite" else (
        f" --store {config.store}" if sqlite_file(config.store) else " --store STORE")
    what = (f"was running in {ran_in}, but its orchestrator (pid {record.pid} on "
            f"{record.host}) is gone" if crashed else f"already ran in {ran_in}")
    raise SessionError(
        f"session {sid} {what}: `vibe-engine resume {sid} --state-dir "
        f"{ran_in}{store}` continues it; without session_id in the config, run starts a "
        "new session", state_dir=ran_in)


def resumable_config(state_dir: Path, store: str, session_id: str | None) -> VibeConfig:
    """The config of ``session_id`` (default: the last interrupted session in
    ``state_dir``), set to continue that session (named, a completed session may be
    continued too: its failed tasks run again)."""
    records = anyio.run(_sessions, store, state_dir)
    if session_id is not None:
        found = [r for r in records if r.session_id == session_id]
        if not found:
            raise SessionError(f"no session {session_id} in {state_dir}",
                               state_dir=str(state_dir))
        record = found[0]  # a completed one too: its failed tasks run again
    else:
        open_ = [r for r in records if r.state != "completed"]
        if not open_:
            raise SessionError(f"no interrupted session in {state_dir}; `vibe-engine run "
                               "CONFIG` starts a new one", state_dir=str(state_dir))
        record = open_[-1]
    return VibeConfig.model_validate(  # an id from before ids were checked resumes too
        {**record.config, "session_id": record.session_id, "state_dir": str(state_dir)},
        context={"resuming": True})
