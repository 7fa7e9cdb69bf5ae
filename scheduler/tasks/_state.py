"""Per-task runtime state shared by the gateway, the agent context and the orchestrator.

Every field is typed: the status is a :class:`TaskStatus`, the soft signals that
alerts and replanning give the gateway and the agent are :class:`TaskSignals`, and
the controls the orchestrator acts on (abort, retry, split) are fields of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio

from scheduler.budget import TaskProfile
from scheduler.config import PRIORITY_VALUES, TaskSpec


class TaskStatus(StrEnum):
    """Where a task is in its life; a ``StrEnum`` so records and JSON keep the plain word."""

    PENDING = "pending"
    RUNNING = "running"
    REQUEUED = "requeued"
    DEFERRED = "deferred"  # R6.7: waiting for its model to recover
    BROKEN_DOWN = "broken_down"  # R6.2: its parts run in its place
    COMPLETED = "completed"
    FINISHED = "finished"  # paused, then told to save and finish (R3.4)
    FAILED = "failed"
    #: The run stopped (Ctrl-C, cancelled) while the task was running: resumable.
    INTERRUPTED = "interrupted"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({TaskStatus.COMPLETED, TaskStatus.FINISHED, TaskStatus.FAILED})


@dataclass(slots=True)
class TaskSignals:
    """Soft signals other parts set and the gateway and the agent read (R3.2, R4.2, R6.7)."""

    prefer_cheaper: bool = False  # a warning crossed: route to a cheaper tier
    aggressive: bool = False  # a critical alert: downgrade aggressively
    alert_level: str = ""  # the alert indicator shown to the agent
    checkpoint_requested: bool = False  # save progress at the next safe point
    simplify: str = ""  # replanning's instruction to do only the key part


@dataclass(frozen=True, slots=True)
class Abort:
    """Why a running attempt was cancelled, and whether the task goes back in the queue."""

    reason: str
    requeue: bool


@dataclass(slots=True)
class TaskHandle:
    """A task being run: its spec, what was decided about it, and its live state."""

    spec: TaskSpec
    profile: TaskProfile
    attempt: int = 1
    status: TaskStatus = TaskStatus.PENDING
    reason: str = ""
    result: Any = None
    #: ``result`` as kept with the task (JSON, see ``encode_result``), once it completed.
    stored_result: Any = None
    model: str = ""
    calls: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    signals: TaskSignals = field(default_factory=TaskSignals)
    abort: Abort | None = None  # set by Orchestrator.abort (deadlock victims, R5.7)
    retry: str = ""  # why the next attempt runs (R4.3 upgrade after a failure)
    split_from: str = ""  # the task this one is a part of (R6.2): parts are not split again
    cancel_scope: anyio.CancelScope | None = None
    #: Set once the task ended for this run; the event exists only once someone waits
    #: (a run of 10,000 tasks holds no event per task that nobody waits for).
    _done: anyio.Event | None = field(default=None, init=False, repr=False)
    _ended: bool = field(default=False, init=False, repr=False)
    #: ``spec.id``, an attribute: the path of every model call reads it several times,
    #: and a task's id never changes (a spec replaced on the handle keeps its id).
    id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.id = self.spec.id

    @property
    def done(self) -> anyio.Event:
        """An event set when the task ends for this run (see :meth:`set_done`)."""
        if self._done is None:
            self._done = anyio.Event()
            if self._ended:
                self._done.set()
        return self._done

    def set_done(self) -> None:
        """The task ended for this run: wake whoever waits for it, now or later."""
        self._ended = True
        if self._done is not None:
            self._done.set()

    @property
    def priority(self) -> int:
        return PRIORITY_VALUES[self.spec.priority]

    @property
    def finished(self) -> bool:
        return self.status.ended
