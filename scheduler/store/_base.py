"""The ``Store`` protocol every backend implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from scheduler.core import Totals, UsageEvent


def scopes_of(event: UsageEvent) -> tuple[str, str, str]:
    """The nested scopes one event is charged to (R1.2): task ⊂ session ⊂ day."""
    return (f"task:{event.task_id}", f"session:{event.session_id}", f"day:{event.day}")


@runtime_checkable
class Store(Protocol):
    """Append-only, idempotent usage log with per-scope totals, plus small state records.

    ``record`` returns ``False`` when an event with the same ``event_id`` was
    already recorded (it is then not charged again).  State records are JSON
    objects grouped by ``kind`` (``task``, ``pause``, ``decision``,
    ``checkpoint``, ``history`` …) and keyed by a string.
    """

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def record(self, event: UsageEvent) -> bool: ...

    async def totals(self, scope: str) -> Totals: ...

    async def events(
        self,
        *,
        task_id: str | None = None,
        day_from: str | None = None,
        day_to: str | None = None,
    ) -> list[UsageEvent]: ...

    async def put_state(self, kind: str, key: str, value: dict[str, Any]) -> None: ...

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None: ...

    async def list_state(self, kind: str) -> dict[str, dict[str, Any]]: ...

    async def delete_state(self, kind: str, key: str) -> None: ...
