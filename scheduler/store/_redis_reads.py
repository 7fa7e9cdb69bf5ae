"""Reads and spool helpers of :class:`~scheduler.store._redis.RedisStore` kept apart
from it: the usage log read back, and what the spool holds of a scope's usage."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import cast

from scheduler.core import Totals, UsageEvent
from scheduler.store._base import OPEN_CALL, scopes_of
from scheduler.store._redis_conn import DOWN, RedisConnection
from scheduler.store._spool import SpooledEvent, SpooledState


async def read_events(link: RedisConnection, key: Callable[..., str], task_id: str | None,
                      day_from: str | None, day_to: str | None) -> list[UsageEvent]:
    """The recorded events of ``task_id`` / the days ``day_from``..``day_to``, in order."""
    if task_id is not None:
        index = key("ev", "task", task_id)
    elif day_from is not None and day_from == day_to:
        index = key("ev", "day", day_from)
    else:
        index = key("ev", "all")
    try:
        ids = cast(list[str], await link.client.zrange(index, 0, -1))
        rows: list[str | None] = []
        for i in range(0, len(ids), 1000):
            rows += cast(list[str | None],
                         await link.client.hmget(key("events"), ids[i:i + 1000]))
    except DOWN as exc:
        raise link.unavailable("events", exc) from exc
    out: list[tuple[float, int, UsageEvent]] = []
    for seq, row in enumerate(rows):
        if row is None:
            continue
        e = UsageEvent.from_dict(json.loads(row))
        if (task_id is None or e.task_id == task_id) and (
            day_from is None or e.day >= day_from
        ) and (day_to is None or e.day <= day_to):
            out.append((e.at, seq, e))
    out.sort(key=lambda t: (t[0], t[1]))
    return [e for _, _, e in out]


def add_spooled(totals: Totals, scope: str,
                spooled: Sequence[SpooledEvent | SpooledState]) -> None:
    """Add the usage of ``scope`` that waits in the spool (any process's) to ``totals``."""
    for entry in spooled:
        if isinstance(entry, SpooledEvent) and scope in scopes_of(entry.event):
            totals.add(entry.event)  # its version is known once replayed


def closed_with(event: UsageEvent, after: Sequence[SpooledEvent | SpooledState]) -> str | None:
    """The open call a spooled event closes: the delete of its record spooled right after."""
    nxt = after[0] if after else None
    if (isinstance(nxt, SpooledState) and nxt.kind == OPEN_CALL and nxt.value is None
            and nxt.key == event.event_id):
        return nxt.key
    return None
