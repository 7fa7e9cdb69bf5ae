"""Grouped tasks (``KEY/NAME``) that ran and ended on their budget: their calls stay
refused, since starting one again would renew a spent budget.

Each one's status, why it ended and the budget it ran under is a state record of the
store (kind ``serve_ended``, keyed by the task id), so it stays spent across restarts
and replicas, as the task's token and cost totals do -- until the key's
``task_budget`` is changed: the task runs again under the new one.  The latest
``serve.max_tasks_per_key`` of each key are also held in memory (the rest are read from
the store when a call names them), so a long-running serve holds at most that many per
key however many tasks end.  A record the store has not taken yet (it is unreachable)
stays in memory until it has.
"""

from __future__ import annotations

from typing import Any

import anyio

from scheduler.core import StoreError, get_logger
from scheduler.observe import put_states
from scheduler.store import Store

__all__ = ["ENDED_KIND", "Tombstones"]

_log = get_logger("vibe_engine.serve")

#: The kind of the store's state records of ended grouped tasks.
ENDED_KIND = "serve_ended"

#: A task's status and why it ended.
Ended = tuple[str, str]


class Tombstones:
    """The ended grouped tasks of one serve run: at most ``cap`` per key in memory
    (saved ones; unsaved ones are all kept), every one in ``store``."""

    def __init__(self, store: Store, cap: int) -> None:
        self._store, self._cap = store, cap
        #: Per key, task id -> how it ended, oldest first.
        self._held: dict[str, dict[str, Ended]] = {}
        #: Those the store has not taken yet (their records), in the order they ended.
        self._unsaved: dict[str, dict[str, Any]] = {}
        self._wake = anyio.Event()

    def __len__(self) -> int:
        return sum(len(held) for held in self._held.values())

    def add(self, task_id: str, status: str, reason: str, budget: dict[str, Any]) -> None:
        """``task_id`` ran and ended (``status``, ``reason``) under ``budget`` (its
        limits): refused from now on; its record is written to the store by :meth:`keep`."""
        self._unsaved[task_id] = {"status": status, "reason": reason, "budget": budget}
        self._remember(task_id, (status, reason))
        self._wake.set()

    def held(self, task_id: str) -> Ended | None:
        """How ``task_id`` ended, if it is held in memory."""
        return self._held.get(_key(task_id), {}).get(task_id)

    async def stored(self, task_id: str, budget: dict[str, Any]) -> Ended | None:
        """How ``task_id`` ended, from the store (another replica's or an earlier run's
        record too), unless it ran under another budget than ``budget`` (the key's
        ``task_budget`` changed since); raises :class:`StoreError` when the store cannot
        be read."""
        record = await self._store.get_state(ENDED_KIND, task_id)
        if record is None or record.get("budget", budget) != budget:
            return None
        ended = (str(record.get("status", "")), str(record.get("reason", "")))
        self._remember(task_id, ended)
        return ended

    async def keep(self) -> None:
        """The service writing each ended task's record to the store as it ends (those
        still unwritten when the run stops are written then, before the store closes)."""
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await self._save()
        finally:
            with anyio.CancelScope(shield=True):
                await self._save()

    async def _save(self) -> None:
        batch = dict(self._unsaved)
        if not batch:
            return
        try:
            await put_states(self._store, ENDED_KIND, list(batch.items()))
        except StoreError as exc:  # written with the next task that ends, or at the stop
            _log.warning("serve_ended_not_saved", tasks=len(batch), error=str(exc))
            return
        for task_id, record in batch.items():
            if self._unsaved.get(task_id) is record:
                del self._unsaved[task_id]
        for key in {_key(task_id) for task_id in batch}:
            self._trim(key)

    def _remember(self, task_id: str, ended: Ended) -> None:
        key = _key(task_id)
        held = self._held.setdefault(key, {})
        held.pop(task_id, None)  # the latest last
        held[task_id] = ended
        self._trim(key)

    def _trim(self, key: str) -> None:
        """Forget the oldest saved records of ``key`` past the cap (the store has them)."""
        held = self._held.get(key)
        if held is None or len(held) <= self._cap:
            return
        for task_id in [t for t in held if t not in self._unsaved][:len(held) - self._cap]:
            del held[task_id]


def _key(task_id: str) -> str:
    return task_id.partition("/")[0]
