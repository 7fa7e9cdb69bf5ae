"""An in-process store: fast, forgets everything at exit (tests, benchmarks)."""

from __future__ import annotations

import copy
from typing import Any

from scheduler.core import Totals, UsageEvent
from scheduler.store._base import (
    ESTIMATED_CHARGE,
    OPEN_CALL,
    RECORDED,
    REPEATED,
    REPLACED,
    check_event,
    scopes_of,
)


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

    async def record_and_delete_state(self, event: UsageEvent, kind: str, key: str) -> int:
        """See ``store.record_and_delete_state`` (an estimate charged meanwhile replaced)."""
        fresh = self.record_nowait(event)
        gone = self._state.get(kind, {}).pop(key, None) is None
        if not fresh:
            return REPEATED
        if kind == OPEN_CALL and gone and self._take_back_estimate(key):
            return REPLACED
        return RECORDED

    async def charge_open_call(self, estimate: UsageEvent, key: str,
                               mark: dict[str, Any]) -> bool:
        """See ``store.charge_open_call``."""
        if self._state.get(OPEN_CALL, {}).pop(key, None) is None or key in self._events:
            return False
        if not self.record_nowait(estimate):
            return False
        self._state.setdefault(ESTIMATED_CHARGE, {})[key] = copy.deepcopy(mark)
        return True

    def _take_back_estimate(self, key: str) -> bool:
        mark = self._state.get(ESTIMATED_CHARGE, {}).pop(key, None)
        if mark is None:
            return False
        estimate = self._events.pop(str(mark.get("charged_event_id", "")), None)
        if estimate is None:
            return False
        for scope in mark.get("scopes") or scopes_of(estimate):
            if scope in self._totals:
                self._totals[scope].remove(estimate)
        return True

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
