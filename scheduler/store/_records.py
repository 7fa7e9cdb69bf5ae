"""Sessions and the per-task state records that belong to one session.

A *session* is one run of a set of tasks: ``vibe-engine run`` starts a new one,
``vibe-engine resume`` continues an interrupted one.  Its record (kind
``session``, keyed by the session id) says which tasks it has, how it was
configured, which process runs it and whether it ended.  Every per-task record
of a session -- the task's state and result (kind ``task``), its checkpoint,
its pause, decision and added budget -- is keyed ``<session id>/<task id>``,
so a task id reused by a later session never picks up an earlier session's
state.  A task's usage in one session is the sum of its events of that session
(the store's ``task:<id>`` totals span every session that used the id).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scheduler.core import Totals
from scheduler.store._base import Store

__all__ = [
    "SessionRecord", "latest_session", "list_sessions", "session_task_totals", "task_key",
    "task_of_key",
]

SessionState = Literal["running", "completed", "interrupted"]


#: A ``/`` in a task id (a serve key's grouped task ``KEY/NAME``) as its record key holds
#: it: configured task ids hold neither, so the key's last ``/`` still ends the session.
_SLASH = "%2F"


def task_key(session_id: str, task_id: str) -> str:
    """The key of ``task_id``'s state records in ``session_id``."""
    return f"{session_id}/{task_id.replace('/', _SLASH)}"


def task_of_key(key: str) -> tuple[str, str]:
    """``(session_id, task_id)`` of a key made by :func:`task_key`."""
    session, _, task = key.rpartition("/")
    return session, task.replace(_SLASH, "/")


async def session_task_totals(store: Store, session_id: str, task_id: str) -> Totals:
    """What ``task_id`` used in ``session_id``: the sum of that session's events."""
    totals = Totals()
    for event in await store.events(task_id=task_id):
        if event.session_id == session_id:
            totals.add(event)
    return totals


@dataclass(slots=True)
class SessionRecord:
    """One session: its tasks, its config, the process that runs it and how it ended.

    ``state`` is ``running`` while an orchestrator runs it; a ``running`` record
    whose orchestrator is gone (killed) counts as interrupted.  ``host``, ``pid`` and
    ``proc_start`` name that orchestrator (``scheduler.core.process_gone``); records
    written before they were kept load with them empty.  ``members`` names, as
    ``[host, pid, proc_start]``, every orchestrator running it (those that joined it
    from other state directories too): it is interrupted only once all are gone.
    """

    session_id: str
    state: SessionState = "running"
    state_dir: str = ""
    pid: int = 0
    host: str = ""
    proc_start: str = ""
    started: str = ""
    ended: str = ""
    tasks: list[str] = field(default_factory=list)
    members: list[list[Any]] = field(default_factory=list)
    #: The run's config as JSON (``VibeConfig.model_dump(mode="json")``), for ``resume``.
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


async def list_sessions(store: Store, *, state_dir: str | None = None) -> list[SessionRecord]:
    """Every session recorded (of ``state_dir`` when given), oldest first."""
    records = [SessionRecord.from_dict(v) for v in (await store.list_state("session")).values()]
    if state_dir is not None:
        records = [r for r in records if r.state_dir == state_dir]
    return sorted(records, key=lambda r: (r.started, r.session_id))


async def latest_session(store: Store, *, state_dir: str | None = None) -> SessionRecord | None:
    """The session started last (of ``state_dir`` when given), or ``None``."""
    records = await list_sessions(store, state_dir=state_dir)
    return records[-1] if records else None
