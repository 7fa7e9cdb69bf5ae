"""A paused task's records as the store holds them, for ``decide`` with or without an
orchestrator running (R3.4)."""

from __future__ import annotations

from typing import Any

from scheduler.store import Store, session_task_totals, task_key, task_of_key


async def review_summary(store: Store, task_id: str, session_id: str) -> dict[str, Any]:
    """What a paused task did and used in its session, read from the store only (R3.4)."""
    key = task_key(session_id, task_id)
    totals = await session_task_totals(store, session_id, task_id)
    return {
        "task_id": task_id,
        "session_id": session_id,
        "usage": totals.to_dict(),
        "pause": await store.get_state("pause", key),
        "checkpoint": await store.get_state("checkpoint", key),
        "overdrafts": [v for v in (await store.list_state("overdraft")).values()
                       if v.get("task_id") == task_id],
        "budget_added": await store.get_state("budget", key),
    }


async def paused_session(store: Store, task_id: str) -> str | None:
    """The session in which ``task_id`` is paused (the latest pause when several are)."""
    found = [(float(v.get("at", 0.0)), task_of_key(k)[0])
             for k, v in (await store.list_state("pause")).items()
             if task_of_key(k)[1] == task_id]
    return max(found)[1] if found else None
