"""An in-process store: fast, forgets everything at exit (tests, benchmarks)."""

from __future__ import annotations

import copy
from typing import Any

from scheduler.core import Totals, UsageEvent
from scheduler.store._base import check_event, scopes_of


class MemoryStore:
    """Dict-backed :class:`~scheduler.store.Store`."""

    def __init__(self) -> None:
        self._events: dict[str, UsageEvent] = {}
        self._totals: dict[str, Totals] = {}
        self._state: dict[str, dict[str, dict[str, Any]]] = {}

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def record_nowait(self, event: UsageEvent) -> bool:
        check_event(event)
        if event.event_id in self._events:
            return False
        self._events[event.event_id] = event
        for scope in scopes_of(event):
            totals = self._totals.get(scope)
            if totals is None:
                totals = self._totals[scope] = Totals()
            totals.add(event)
        return True

    async def record(self, event: UsageEvent) -> bool:
        return self.record_nowait(event)

    async def totals(self, scope: str) -> Totals:
        t = self._totals.get(scope)
        return t.copy() if t is not None else Totals()

    async def events(
        self,
        *,
        task_id: str | None = None,
        day_from: str | None = None,
        day_to: str | None = None,
    ) -> list[UsageEvent]:
        return [
            e
            for e in self._events.values()
            if (task_id is None or e.task_id == task_id)
            and (day_from is None or e.day >= day_from)
            and (day_to is None or e.day <= day_to)
        ]

    async def put_state(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self._state.setdefault(kind, {})[key] = copy.deepcopy(value)

    async def put_state_if_absent(self, kind: str, key: str, value: dict[str, Any]) -> bool:
        records = self._state.setdefault(kind, {})
        if key in records:
            return False
        records[key] = copy.deepcopy(value)
        return True

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None:
        v = self._state.get(kind, {}).get(key)
        return copy.deepcopy(v) if v is not None else None

    async def list_state(self, kind: str) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._state.get(kind, {}))

    async def delete_state(self, kind: str, key: str) -> None:
        self._state.get(kind, {}).pop(key, None)
