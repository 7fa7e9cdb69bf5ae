"""Helpers of :class:`~scheduler.store._redis.RedisStore` kept apart from it: the usage
log read back, what the spool holds of a scope's usage and of the state records, and the
fail-open allowance of holds granted while Redis is unreachable."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from scheduler.config import DistributedConfig
from scheduler.core import StoreUnavailableError, Totals, UsageEvent, get_logger
from scheduler.store._base import scopes_of
from scheduler.store._ledger import Hold, ScopeLimit
from scheduler.store._redis_conn import DOWN, RedisConnection
from scheduler.store._spool import SpooledEvent, SpooledState
from scheduler.store._spool import closed_with as closed_with
from scheduler.store._spool import with_spooled_events as with_spooled_events

_log = get_logger("vibe_engine.store.redis")


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


def spooled_state(spooled: Sequence[SpooledEvent | SpooledState], kind: str
                  ) -> dict[str, dict[str, Any] | None]:
    """The state writes of ``kind`` waiting in the spool: the last per key (None: a
    delete), as their replay leaves them."""
    return {e.key: e.value for e in spooled if isinstance(e, SpooledState) and e.kind == kind}


def with_spooled(stored: dict[str, dict[str, Any]],
                 entries: Sequence[SpooledEvent | SpooledState], kind: str,
                 ) -> dict[str, dict[str, Any]]:
    """``stored`` (``kind``'s records in Redis) as the spooled writes leave it, by key."""
    spooled = spooled_state(entries, kind)
    for key, value in spooled.items():
        if value is None:
            stored.pop(key, None)
        else:
            stored[key] = value
    return dict(sorted(stored.items()))


class FailOpenAllowance:
    """What holds granted locally while Redis is unreachable may add up to (``"open"``
    failure mode; none while ``"closed"``), until Redis answers again."""

    def __init__(self, config: DistributedConfig, namespace: str) -> None:
        self.config, self.namespace = config, namespace
        self.tokens, self.cost_usd = 0, 0.0

    def reset(self) -> None:
        self.tokens, self.cost_usd = 0, 0.0

    def take(self, exc: BaseException, hold_id: str, limits: tuple[ScopeLimit, ...],
             model: str, tokens: int, cost_usd: float) -> Hold:
        """A local hold of ``tokens`` / ``cost_usd``, or :class:`StoreUnavailableError`
        (from ``exc``, why Redis could not grant it) when fail-closed or used up."""
        cfg = self.config
        if cfg.failure_mode == "closed":
            raise StoreUnavailableError(
                f"Redis unreachable, no new holds while fail-closed: {exc}") from exc
        if (self.tokens + tokens > cfg.fail_open_tokens
                or self.cost_usd + cost_usd > cfg.fail_open_cost_usd):
            raise StoreUnavailableError(
                f"Redis unreachable and the fail-open allowance is used up: {exc}") from exc
        self.tokens += tokens
        self.cost_usd += cost_usd
        _log.warning("redis_fail_open_hold", namespace=self.namespace, tokens=tokens,
                     allowance_used=self.tokens)
        scopes = tuple(lim.scope for lim in limits)
        return Hold(hold_id, scopes, model, tokens, cost_usd, {}, {}, local=True)
