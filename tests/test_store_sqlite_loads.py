"""R1.5 on SQLite: an open call of a dead process, charged at its estimate while the new
day's totals are read, counts once in the local view.

Recovery charges every call a gone process left open, one after the other, and
between two of them the store may let other tasks run (a write waiting for its group
commit, a database locked by another process); the new day's totals read then hold
the estimates charged so far.  Each estimate is added to the local scopes as soon as
it is charged: a scope read before holds none of it and adds it, one read after holds
it.  (The same orders on Redis, with its versions: ``test_store_redis_loads``.)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import TaskSpec, UsageEvent, VibeConfig
from scheduler.budget import resolve_task
from scheduler.budget._open_calls import OPEN
from scheduler.core import FixedWallClock, Totals
from scheduler.runtime import Orchestrator
from scheduler.store import SqliteStore
from scheduler.testing import ScriptedProvider

pytestmark = pytest.mark.anyio
DAY_2 = "2026-11-27"
ESTIMATE = 1_000 + 234


class StepsHeld(SqliteStore):
    """The real SqliteStore; the test holds the second estimate's charge and the day's
    read to force one order (what a group commit's wait lets happen)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.before_read: dict[str, Callable[[], Awaitable[None]]] = {}
        self.before_charge: list[Callable[[], Awaitable[None]]] = []

    async def totals(self, scope: str) -> Totals:
        step = self.before_read.pop(scope, None)
        if step is not None:
            await step()
        return await super().totals(scope)

    async def charge_open_call(self, estimate: UsageEvent, key: str,
                               mark: dict[str, Any]) -> bool:
        if self.before_charge:
            await self.before_charge.pop(0)()
        return await super().charge_open_call(estimate, key, mark)


async def _gone_call(store: SqliteStore, key: str) -> None:
    """The record of a call an earlier process of this pid left open today (DAY_2)."""
    await store.put_state(OPEN, key, {
        "event_id": key, "task_id": "elsewhere", "session_id": "gone", "day": DAY_2,
        "agent": "qa", "task_type": "question", "model": "sonnet", "prompt_tokens": 1_000,
        "output_tokens": 234, "cost_usd": 0.01, "host": socket.gethostname(),
        "pid": os.getpid(), "run": "gone-run", "day_scope": ""})


async def test_r1_5_estimates_recovered_across_the_new_days_read_count_once(
        tmp_path: Path) -> None:
    """R1.5: two calls of a dead process are charged at their estimates; the new day's
    totals are read between the two charges.  The day's view holds each once, as the
    store does (the first was added again after the read that held it: 3,702 tokens in
    view, 2,468 stored)."""
    cfg = VibeConfig.model_validate({
        "state_dir": str(tmp_path / "run"), "store": str(tmp_path / "vibe.db"),
        "session_id": "s0", "budgets": {"weekend_day_cost_usd": None}})
    store = StepsHeld(tmp_path / "vibe.db")
    wall = FixedWallClock(datetime(2026, 11, 26, 12, tzinfo=UTC))
    orch = Orchestrator(cfg, provider=ScriptedProvider(latency_s=0.0), agents={},
                        store=store, wall=wall)
    await orch.open()
    try:
        spec = TaskSpec(id="t", agent="qa", prompt="Fix the parser")
        await orch.tracker.start_task("t", resolve_task(spec, cfg), agent="qa")
        wall.at += timedelta(days=1)
        first_charged, read = anyio.Event(), anyio.Event()

        async def second_after_the_read() -> None:
            first_charged.set()
            await read.wait()

        async def load_today() -> None:
            await first_charged.wait()
            await orch.tracker.load_today("t")
            read.set()

        store.before_charge = [_nothing, second_after_the_read]
        for key in ("gone:1", "gone:2"):
            await _gone_call(store, key)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load_today)
            tg.start_soon(orch.tracker.recover_open_calls)
        day = orch.tracker.day_scope()
        assert day.name == f"day:{DAY_2}"
        assert (day.totals.tokens, (await store.totals(day.name)).tokens) == (
            2 * ESTIMATE, 2 * ESTIMATE)
    finally:
        await orch.aclose()


async def _nothing() -> None:
    pass
