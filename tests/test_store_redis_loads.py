"""R1.5/R2.1 on Redis: reading a scope's totals (a new day, a task's start) while this
process charges it leaves the local view equal to the store's totals.

The local scopes (what alerts, ``status``, ``usage.json`` and pauses read) are read
from Redis once, when a day begins or a task starts, then added to per charge.  A
charge recorded while such a read is under way is in the read or not depending on
which reached Redis first: without the totals' version the view counted it twice or
not at all.  A store that cannot answer for a moment (the first read of the day
failed, the charges went on) or the open-call recovery of another process's call
(charged at its estimate) meets both orders; each test below forces one order on the
real Redis, holding one step of the store until another has happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from scheduler import TaskSpec, UsageEvent, VibeConfig
from scheduler.budget import resolve_task
from scheduler.budget._open_calls import OPEN
from scheduler.core import FixedWallClock, StoreUnavailableError, Totals
from scheduler.runtime import Orchestrator
from scheduler.store import task_day_scope
from scheduler.store._ledger import Hold, Recorded, Settled
from scheduler.store._redis import RedisStore
from scheduler.store._redis_conn import _RETRY_AFTER_S
from scheduler.store._spool import SpooledEvent
from scheduler.testing import ScriptedProvider
from tests._redis_helpers import REDIS_URL, TcpProxy

pytestmark = [pytest.mark.redis, pytest.mark.real_asyncio]  # RedisStore runs on redis.asyncio
DAY_1 = datetime(2026, 11, 26, 12, tzinfo=UTC)
DAY_2 = "2026-11-27"
Step = Callable[[], Awaitable[None]]


class StepsHeld(RedisStore):
    """The real RedisStore; a test holds some of its steps to force one order."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        #: Per scope, run before (after) its next totals read, once each.
        self.before_read: dict[str, list[Step]] = {}
        self.after_read: dict[str, list[Step]] = {}
        #: Per event id, run before its record is sent to Redis (after: once it reached
        #: Redis, before its caller resumes).
        self.before_commit: dict[str, Step] = {}
        self.after_commit: dict[str, Step] = {}
        self.after_charge_open: Step | None = None

    async def totals_with_version(self, scope: str) -> tuple[Totals, int]:
        if self.before_read.get(scope):
            await self.before_read[scope].pop(0)()
        got = await super().totals_with_version(scope)
        if self.after_read.get(scope):
            await self.after_read[scope].pop(0)()
        return got

    def commit(self, event: UsageEvent, hold: Hold | None = None,
               close: str | None = None) -> Awaitable[Recorded | Settled]:
        return self._commit_then(event, hold, close)

    async def _commit_then(self, event: UsageEvent, hold: Hold | None,
                           close: str | None) -> Recorded | Settled:
        step = self.before_commit.pop(event.event_id, None)
        if step is not None:
            await step()
        got = await super().commit(event, hold, close)
        step = self.after_commit.pop(event.event_id, None)
        if step is not None:
            await step()
        return got

    async def charge_open_call(self, estimate: UsageEvent, key: str,
                               mark: dict[str, Any]) -> bool | tuple[int, ...]:
        got = await super().charge_open_call(estimate, key, mark)
        step, self.after_charge_open = self.after_charge_open, None
        if step is not None:
            await step()
        return got


async def _blip() -> None:
    raise StoreUnavailableError("Redis did not answer this read")


async def _turns(n: int = 20) -> None:
    """Let every task that can run without the store take its next steps."""
    for _ in range(n):
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def _opened(tmp_path: Path, ns: str, url: str = REDIS_URL, *, day_budget: bool = False,
                  ) -> AsyncIterator[tuple[Orchestrator, StepsHeld]]:
    """An orchestrator on Redis at ``url`` (a store whose steps the test can hold),
    opened on DAY_1 with task ``t`` started (with a per-day budget: ``day_budget``);
    the wall clock then moved to DAY_2."""
    cfg = VibeConfig.model_validate({
        "state_dir": str(tmp_path / "run"), "store": f"{url}?namespace={ns}",
        "session_id": "s0", "budgets": {"weekend_day_cost_usd": None},
        "distributed": {"socket_timeout_s": 0.5}})
    store = StepsHeld(url, namespace=ns, config=cfg.distributed,
                      spool_path=tmp_path / "spool")
    wall = FixedWallClock(DAY_1)
    orch = Orchestrator(cfg, provider=ScriptedProvider(latency_s=0.0), agents={},
                        store=store, wall=wall)
    await orch.open()
    try:
        spec = TaskSpec(id="t", agent="qa", prompt="Fix the parser",
                        day_budget={"file_edits": 1_000} if day_budget else None)
        await orch.tracker.start_task("t", resolve_task(spec, cfg), agent="qa")
        wall.at += timedelta(days=1)
        yield orch, store
    finally:
        await orch.aclose()


def _edits(orch: Orchestrator, n: int) -> UsageEvent:
    """A charge of file edits by task ``t`` today (what an agent's file operation makes)."""
    return orch.tracker.make_event("t", file_edits=n, event_id=f"edit-{n}")


async def _view_and_store(orch: Orchestrator, store: RedisStore) -> tuple[int, int]:
    day = orch.tracker.day_scope()
    assert day.name == f"day:{DAY_2}"
    return day.totals.file_edits, (await store.totals(day.name)).file_edits


async def test_r1_5_a_charge_recorded_before_the_new_days_read_is_not_added_again(
        redis_ns: str, tmp_path: Path) -> None:
    """R1.5/R2.1: two charges meet a new day whose first reads failed (Redis did not
    answer for a moment); the read that then succeeds holds both, and the one that
    resumes after it is not added a second time (it was: 5 edits in view, 3 stored)."""
    async with _opened(tmp_path, redis_ns) as (orch, store):
        day = f"day:{DAY_2}"
        second_recorded, read = anyio.Event(), anyio.Event()

        async def read_after_the_second() -> None:
            await second_recorded.wait()

        async def resume_after_the_read() -> None:
            second_recorded.set()
            await read.wait()
            await _turns()  # the read taken over by the day's scope

        async def read_ends() -> None:
            read.set()

        store.before_read[day] = [_blip, _blip, read_after_the_second]
        store.after_read[day] = [read_ends]
        store.after_commit["edit-2"] = resume_after_the_read
        async with anyio.create_task_group() as tg:
            tg.start_soon(orch.tracker.charge, _edits(orch, 1))
            tg.start_soon(orch.tracker.charge, _edits(orch, 2))
        assert await _view_and_store(orch, store) == (3, 3)


async def test_r1_5_a_charge_recorded_after_the_new_days_read_began_is_kept(
        redis_ns: str, tmp_path: Path) -> None:
    """R1.5/R2.1: the other order -- the day's read reached Redis before a charge that
    waited for it; that charge is added once the read ends (it was lost: 1 edit in
    view, 3 stored)."""
    async with _opened(tmp_path, redis_ns) as (orch, store):
        day = f"day:{DAY_2}"
        read, second_recorded = anyio.Event(), anyio.Event()

        async def end_read_once_the_second_waits() -> None:
            read.set()
            await second_recorded.wait()
            await _turns()

        async def recorded() -> None:
            second_recorded.set()

        store.before_read[day] = [_blip, _blip]
        store.after_read[day] = [end_read_once_the_second_waits]
        store.before_commit["edit-2"] = read.wait  # recorded once the read reached Redis
        store.after_commit["edit-2"] = recorded
        async with anyio.create_task_group() as tg:
            tg.start_soon(orch.tracker.charge, _edits(orch, 1))
            tg.start_soon(orch.tracker.charge, _edits(orch, 2))
        assert await _view_and_store(orch, store) == (3, 3)


async def _dead_process_call(store: RedisStore) -> None:
    """The record of a call another process left open today (DAY_2) before it died: an
    earlier process of this pid, whose run is not alive here."""
    import os
    import socket
    await store.put_state(OPEN, "gone:1", {
        "event_id": "gone:1", "task_id": "elsewhere", "session_id": "gone", "day": DAY_2,
        "agent": "qa", "task_type": "question", "model": "sonnet", "prompt_tokens": 1_000,
        "output_tokens": 234, "cost_usd": 0.01, "host": socket.gethostname(),
        "pid": os.getpid(), "run": "gone-run", "day_scope": ""})


async def _recover_during_new_days_read(orch: Orchestrator, store: StepsHeld, *,
                                        read_first: bool) -> tuple[int, int]:
    """Recover the dead process's call while the new day's totals are read (a task's
    first call of the day): the read before the estimate's record or after it."""
    day = f"day:{DAY_2}"
    charged, read_done = anyio.Event(), anyio.Event()

    async def after_charge() -> None:
        charged.set()
        if not read_first:
            await read_done.wait()
            await _turns()  # the read taken over before the estimate is added

    async def before_read() -> None:
        if not read_first:
            await charged.wait()

    async def after_read() -> None:
        if read_first:  # read before the estimate; ends once the estimate was added
            await charged.wait()
            await _turns()
        read_done.set()

    store.after_charge_open = after_charge
    store.before_read[day] = [before_read]
    store.after_read[day] = [after_read]
    await _dead_process_call(store)
    async with anyio.create_task_group() as tg:
        tg.start_soon(orch.tracker.load_today, "t")
        await _turns() if read_first else None
        tg.start_soon(orch.tracker.recover_open_calls)
    view = orch.tracker.day_scope().totals.tokens
    return view, (await store.totals(day)).tokens


async def test_r1_5_an_estimate_recovered_while_the_day_is_read_is_counted_once(
        redis_ns: str, tmp_path: Path) -> None:
    """R1.5: a stale process's call charged at its estimate while the new day's totals
    are read, the read after the estimate's record: the view holds it once (it held it
    twice: 2,468 tokens in view, 1,234 stored)."""
    async with _opened(tmp_path, redis_ns) as (orch, store):
        assert await _recover_during_new_days_read(orch, store, read_first=False) == (
            1_234, 1_234)


async def test_r1_5_an_estimate_recovered_after_the_days_read_began_is_kept(
        redis_ns: str, tmp_path: Path) -> None:
    """R1.5: the other order -- the day's read reached Redis before the estimate was
    recorded: the estimate is added once the read ends (it was lost: 0 in view)."""
    async with _opened(tmp_path, redis_ns) as (orch, store):
        assert await _recover_during_new_days_read(orch, store, read_first=True) == (
            1_234, 1_234)


@pytest.mark.parametrize("replayed_first", [True, False], ids=["replayed", "still-spooled"])
async def test_r1_5_usage_spooled_at_a_new_days_start_counts_once_when_replayed(
        redis_ns: str, tmp_path: Path, replayed_first: bool) -> None:
    """R1.5: the day's first charge made while Redis is unreachable is spooled (and the
    charge does not fail: it is recorded).  Once Redis answers again the next charge
    reads the new day's totals -- the spool replayed first, or, while the store still
    waits to try Redis again, with the spooled usage added -- and the views of the day,
    the task's day (it has a per-day budget), the session and the task hold both
    charges once, as Redis does after the replay
    (the spooled one was lost: 2 edits in each view, 3 stored; the first charge failed)."""
    with closing(TcpProxy()) as proxy:
        async with _opened(tmp_path, redis_ns, proxy.url, day_budget=True) as (orch, store):
            proxy.cut()
            await orch.tracker.charge(_edits(orch, 1))
            assert len(store.spool) == 1
            proxy.restore()
            if replayed_first:
                await anyio.sleep(2 * _RETRY_AFTER_S)  # the store tries Redis again
            await orch.tracker.charge(_edits(orch, 2))
            spooled = [e for e in store.spool.read() if isinstance(e, SpooledEvent)]
            assert len(spooled) == (0 if replayed_first else 2)
            assert await store.flush() == 0
            tracker = orch.tracker
            task_day = tracker.scope_named("t", task_day_scope("t", DAY_2))
            assert task_day is not None
            for scope in (tracker.day_scope(), tracker.session, tracker.task_scope("t"),
                          task_day):
                stored = await store.totals(scope.name)
                assert (scope.totals.file_edits, stored.file_edits) == (3, 3), scope.name
