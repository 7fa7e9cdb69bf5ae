"""Typed runtime events and the bus that fans them out.

Events are the runtime's notable moments (alerts, pauses, routing changes,
deadlock victims, health changes) — never per-acquire noise.  Each emitted
event is logged through structlog under its stable snake_case ``name`` and
handed to every subscriber (live view, metrics, tests).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.core._log import get_logger

_log = get_logger("vibe_engine.events")


@dataclass(frozen=True, slots=True)
class Event:
    """One runtime event. ``at`` is the event loop's clock (seconds)."""

    name: str
    at: float
    message: str = ""
    task_id: str | None = None
    agent: str | None = None
    level: str = "info"
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "at": self.at,
            "message": self.message,
            "task_id": self.task_id,
            "agent": self.agent,
            "level": self.level,
            "data": dict(self.data),
        }


Subscriber = Callable[[Event], None]

#: Events every task makes once: logged at debug level, not info (a run of 10,000 tasks
#: would log a line each, a tenth of a task's cost); the orchestrator logs their count
#: once, when the run ends (``run_ended``).  Subscribers get them as any other event.
ROUTINE_EVENTS = frozenset({"task_completed"})


class EventBus:
    """Synchronous fan-out of :class:`Event` to subscribers, with a bounded history."""

    def __init__(self, clock: Callable[[], float], history: int = 1000) -> None:
        self._clock = clock
        self._subscribers: list[Subscriber] = []
        self.history: deque[Event] = deque(maxlen=history)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn`` for every later event; returns a function that unsubscribes."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def emit(
        self,
        name: str,
        message: str = "",
        *,
        task_id: str | None = None,
        agent: str | None = None,
        level: str = "info",
        **data: Any,
    ) -> Event:
        event = Event(name, self._clock(), message, task_id, agent, level, data)
        self.history.append(event)
        log = _log.debug if name in ROUTINE_EVENTS else getattr(_log, level, _log.info)
        log(name, message=message, task_id=task_id, agent=agent, **data)
        for fn in list(self._subscribers):
            fn(event)
        return event
