"""Per-task runtime state shared by the gateway, the context and the orchestrator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from scheduler.budget._profile import TaskProfile
from scheduler.config._config import PRIORITY_VALUES, TaskSpec


@dataclass(slots=True)
class TaskHandle:
    """A task being run: its spec, what was decided about it, and live flags.

    ``flags`` carries soft signals other parts set and the gateway reads
    (``prefer_cheaper`` after a warning, ``aggressive`` after a critical alert,
    ``simplify`` from replanning …).
    """

    spec: TaskSpec
    profile: TaskProfile
    attempt: int = 1
    status: str = "pending"
    reason: str = ""
    result: Any = None
    model: str = ""
    calls: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    flags: dict[str, Any] = field(default_factory=dict)
    cancel_scope: anyio.CancelScope | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def priority(self) -> int:
        return PRIORITY_VALUES[self.spec.priority]

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "finished")
