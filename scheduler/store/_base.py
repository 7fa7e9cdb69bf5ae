"""The ``Store`` protocol every backend implements."""

from __future__ import annotations

import math
from collections.abc import Awaitable
from datetime import date, timedelta
from typing import Any, Protocol, cast, runtime_checkable

from scheduler.core import InvalidArgumentError, Totals, UsageEvent

_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens",
                 "cache_write_5m_tokens", "cache_write_1h_tokens")
_EVENT_FIELDS = ("cost_usd", "file_edits", "shell_commands", "dangerous_commands")
_PLAIN = frozenset((int, float))  # exact types: a bool is checked closely

#: The state kinds of a model call in flight and of one charged at its estimate because
#: its process seemed gone (``scheduler/budget/_open_calls.py``).  The stores know them:
#: settling such a call must count it once (see :func:`charge_open_call`).
OPEN_CALL = "open_call"
ESTIMATED_CHARGE = "estimated_charge"
#: The state kind noting each calendar day a process on the store began (keyed by the
#: ISO date): the latest is the fleet's day, which no process's day goes back before.
DAY_BEGUN = "day_begun"
#: What a charge that closes its call's ``open_call`` record answers (true when recorded):
#: the event was there already, it was recorded, or it was recorded *in place of* the
#: estimate charged for its call meanwhile (the estimate's event and amounts taken back).
REPEATED, RECORDED, REPLACED = 0, 1, 2


def task_day_scope(task_id: str, day: str) -> str:
    """The scope of what ``task_id`` (and the tasks it encloses) spent on ``day``: where
    a per-day budget (``day_budget``) is counted."""
    return f"task-day:{task_id}:{day}"


def scopes_of(event: UsageEvent) -> tuple[str, ...]:
    """The nested scopes one event is charged to (R1.2): task ⊂ session ⊂ day.  A task id
    ``PARENT/NAME`` (a ``serve`` key's grouped task; configured ids hold no ``/``) is
    inside task ``PARENT`` too: task ⊂ parent ⊂ session ⊂ day.  An event with a
    ``day_scope`` also counts toward that task's day: task ⊂ parent ⊂ its day ⊂ …"""
    parent = event.task_id.rpartition("/")[0]
    own = (f"task:{event.task_id}", *((f"task:{parent}",) if parent else ()))
    if event.day_scope:
        own = (*own, task_day_scope(event.day_scope, event.day))
    return (*own, f"session:{event.session_id}", f"day:{event.day}")


def check_event(event: UsageEvent) -> None:
    """Refuse usage that would corrupt the ledger: a negative or non-finite amount would
    credit the budget (or poison every total after it), so no backend records one."""
    u = event.usage
    values = (u.prompt_tokens, u.completion_tokens, u.cache_read_tokens,
              u.cache_write_5m_tokens, u.cache_write_1h_tokens, event.cost_usd,
              event.file_edits, event.shell_commands, event.dangerous_commands)
    # every charge passes here: plain ints and floats, none negative, and a finite sum
    # (a NaN or an infinity anywhere makes the sum NaN or infinite: not below infinity)
    # need no closer look
    if _PLAIN.issuperset(map(type, values)) and min(values) >= 0 and sum(values) < math.inf:
        return
    amounts = [(f"usage.{f}", getattr(u, f)) for f in _USAGE_FIELDS]
    amounts += [(f, getattr(event, f)) for f in _EVENT_FIELDS]
    for name, value in amounts:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgumentError(name, value, f"event {event.event_id}: not a number")
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(
                name, value, f"event {event.event_id}: usage must be finite and >= 0")


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


def record_and_delete_state(store: Store, event: UsageEvent, kind: str,
                            key: str) -> Awaitable[int]:
    """``store.record(event)``, then ``store.delete_state(kind, key)``: in one transaction
    on a store that can (the stores of this package: the two writes are both made or
    neither; SQLite's write itself is returned, no coroutine more per charge), else one
    after the other (a crash between keeps the state record, never loses the event).

    Closing an ``open_call`` record (``kind`` :data:`OPEN_CALL`, ``key`` the event's id)
    that is no longer there because :func:`charge_open_call` charged the call at its
    estimate meanwhile, the stores of this package record the event in place of that
    estimate, in the same step: the estimate's event, its amounts in the totals of its
    scopes and its ``estimated_charge`` record go, and the answer is :data:`REPLACED`.
    Else :data:`RECORDED`, or :data:`REPEATED` for an event already recorded."""
    both = getattr(store, "record_and_delete_state", None)
    if both is not None:
        written: Awaitable[int] = both(event, kind, key)  # (every charge: no typing.cast)
        return written
    return _record_then_delete(store, event, kind, key)


def charge_open_call(store: Store, estimate: UsageEvent, key: str,
                     mark: dict[str, Any]) -> Awaitable[bool | tuple[int, ...]]:
    """Charge the call whose ``open_call`` record is ``key`` at ``estimate`` (its process
    is gone), in one step on the stores of this package: if that record is still there
    and the call's own event (id ``key``) is not recorded, ``estimate`` is recorded and
    ``mark`` written as its ``estimated_charge`` record (with the scopes it was added to,
    for a settle that replaces it); the ``open_call`` record is deleted in any case.
    True when the estimate was charged (Redis: the versions its scopes reached).  A call
    settled meanwhile is not charged; a call charged here and settled after is counted
    once (:func:`record_and_delete_state`).
    Raises :class:`StoreError` while the store cannot answer (the next round retries)."""
    mark = {**mark, "scopes": list(scopes_of(estimate))}
    charge = getattr(store, "charge_open_call", None)
    if charge is not None:
        return cast("Awaitable[bool | tuple[int, ...]]", charge(estimate, key, mark))
    return _check_then_charge(store, estimate, key, mark)


async def _check_then_charge(store: Store, estimate: UsageEvent, key: str,
                             mark: dict[str, Any]) -> bool:
    """:func:`charge_open_call` on a store without it (not atomic across processes)."""
    if await store.get_state(OPEN_CALL, key) is None:
        return False
    settled = any(e.event_id == key for e in await store.events(task_id=estimate.task_id))
    added = False if settled else await store.record(estimate)
    if added:
        await store.put_state(ESTIMATED_CHARGE, key, mark)
    await store.delete_state(OPEN_CALL, key)
    return added


def put_state_if_absent(store: Store, kind: str, key: str,
                        value: dict[str, Any]) -> Awaitable[bool]:
    """Write the state record ``kind``/``key`` unless one is there; ``True`` when this
    call wrote it.  A claim: on the stores of this package the test and the write are one
    atomic step in the store itself (SQLite ``INSERT OR IGNORE``, Redis ``HSETNX``), so of
    several processes claiming one key at once exactly one gets ``True``.  Never spooled:
    while the store cannot answer it raises :class:`StoreError` (who would win is not
    known).  A store without it is read, then written (not atomic across processes)."""
    claim = getattr(store, "put_state_if_absent", None)
    if claim is not None:
        return cast("Awaitable[bool]", claim(kind, key, value))
    return _get_then_put(store, kind, key, value)


async def _get_then_put(store: Store, kind: str, key: str, value: dict[str, Any]) -> bool:
    if await store.get_state(kind, key) is not None:
        return False
    await store.put_state(kind, key, value)
    return True


async def _record_then_delete(store: Store, event: UsageEvent, kind: str, key: str) -> int:
    added = await store.record(event)
    await store.delete_state(kind, key)
    return RECORDED if added else REPEATED


#: How many days after a process's own date the fleet's day may be: a process whose
#: clock or time zone is ahead passed midnight first (no two time zones are more than
#: 26 hours apart: their dates, at most two days).  A day begun further ahead is a wrong
#: clock's (days, years ahead): followed, it would move every process's use to a day
#: budget of its own and close today's for all.
MAX_DAYS_AHEAD = 2


async def latest_day_begun(store: Store, own: date | None = None) -> date | None:
    """The latest day any process on ``store`` began (its :data:`DAY_BEGUN` records): the
    fleet's day, which no process's day goes back before; None before any began.  With
    ``own`` (the asking process's date), days more than :data:`MAX_DAYS_AHEAD` after it
    are not counted (see there)."""
    begun = await store.list_state(DAY_BEGUN)
    if own is not None:
        last = (own + timedelta(days=MAX_DAYS_AHEAD)).isoformat()
        begun = {k: v for k, v in begun.items() if k <= last}
    return date.fromisoformat(max(begun)) if begun else None
