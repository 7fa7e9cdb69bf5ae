"""Scale-out at scale: thousands of concurrent tasks on one Redis store.

redis-py's default pool opens a connection per concurrent command and refuses the
101st ("Too many connections"), which the store used to report as "Redis
unreachable": 1,499 of 1,500 tasks of one orchestrator failed.  The store's client
now runs on a sized, blocking pool, so every task waits its turn for a connection,
and an error that is not an outage is never reported as one.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import cast

import anyio
import pytest
import structlog

from agents.builtin import QuestionAnswerAgent
from scheduler import Limits, TaskSpec, Usage, VibeConfig
from scheduler.budget import Tracker, resolve_task
from scheduler.core import FixedWallClock, StoreError
from scheduler.runtime import Orchestrator
from scheduler.store._redis import RedisStore
from scheduler.testing import ScriptedProvider
from tests._redis_helpers import REDIS_URL, redis_or_skip

#: Far fewer connections than concurrent tasks: they queue on the pool.
CONNECTIONS = 16
pytestmark = [pytest.mark.redis, pytest.mark.real_asyncio]  # RedisStore runs on redis.asyncio


def _session_totals(ns: str, session: str) -> dict[bytes, bytes]:
    client = redis_or_skip()
    try:
        return cast(dict[bytes, bytes], client.hgetall(f"vibe:{{{ns}}}:tot:session:{session}"))
    finally:
        client.close()


@pytest.mark.slow
async def test_r1_2_ten_thousand_concurrent_tasks_share_one_redis_store(
    redis_ns: str, tmp_path: Path
) -> None:
    """R1.2: 10,000 concurrent tasks of one process, each admitted by an atomic shared
    hold on the session and settled, over a 16-connection pool: every one succeeds,
    nothing is spooled as if Redis were down, and the session's totals in Redis are
    exactly the sum of what the tasks spent."""
    tasks = 10_000
    cfg = VibeConfig.model_validate({
        "budgets": {"session": Limits(tokens=10 * tasks * 100), "day": Limits(),
                    "weekend_day_cost_usd": None},
        # 10,000 runnable tasks keep one event loop busy for seconds: an answer is read
        # late, and a 2-second socket timeout would call a busy loop an outage
        "distributed": {"namespace": redis_ns, "max_connections": CONNECTIONS,
                        "socket_timeout_s": 60.0}})
    store = RedisStore(REDIS_URL, config=cfg.distributed, spool_path=tmp_path / "spool.jsonl")
    await store.open()
    tracker = Tracker(store, cfg, session_id="scale", wall=FixedWallClock(date(2026, 11, 27)))
    await tracker.open()
    spent: list[int] = []

    async def task(i: int) -> None:
        spec = TaskSpec(id=f"t{i}", agent="qa", prompt="What is a lease?")
        await tracker.start_task(spec.id, resolve_task(spec, cfg), agent="qa")
        hold = await tracker.reserve_shared(spec.id, model="haiku", tokens=100, cost_usd=0.0)
        used = 50 + i % 50
        await tracker.charge(tracker.make_event(spec.id, model="haiku",
                                                usage=Usage(used // 2, used - used // 2)), hold)
        spent.append(used)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(task, i)
        assert store.statistics().spooled_writes == 0
        assert store.statistics().connected
    finally:
        await store.aclose()
    totals = _session_totals(redis_ns, "scale")
    assert len(spent) == tasks
    assert int(totals[b"calls"]) == tasks and int(totals[b"tokens"]) == sum(spent)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_r1_2_ten_thousand_tasks_of_one_orchestrator_on_redis(
    redis_ns: str, tmp_path: Path
) -> None:
    """R1.2: one orchestrator runs 10,000 concurrent tasks (a zero-latency scripted
    provider) on the Redis store with a 16-connection pool (1,499 of 1,500 failed with
    redis-py's default pool): all complete, and the session totals in Redis are the sum of
    the tasks' own totals."""
    tasks = 10_000
    cfg = VibeConfig.model_validate({
        "state_dir": str(tmp_path), "store": f"{REDIS_URL}?namespace={redis_ns}",
        "session_id": "scale", "budgets": {"session": Limits(), "day": Limits(),
                                           "weekend_day_cost_usd": None},
        "allocator": {"pools": {"anthropic": {"tokens_per_minute": None,
                                              "requests_per_minute": None,
                                              "concurrent": None}}},
        # a busy event loop reads answers late (see the store-level test above)
        "distributed": {"max_connections": CONNECTIONS, "socket_timeout_s": 60.0},
        "observe": {"status_interval_s": None, "history": False},
    })
    orch = Orchestrator(cfg, provider=ScriptedProvider(), agents={"qa": QuestionAnswerAgent},
                        wall=FixedWallClock(date(2026, 11, 27)))
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    # 10,000 tasks start at once and take minutes of wall time together on a busy 2-core
    # machine: a question's 2-minute time budget would pause them (nobody decides here)
    roomy = Limits(time_s=3600)
    report = await orch.run([TaskSpec(id=f"t{i}", agent="qa", prompt="What is a lease?",
                                      budget=roomy) for i in range(tasks)])
    failed = {o.task_id: o.reason for o in report.outcomes.values() if o.status != "completed"}
    assert not failed, list(failed.items())[:3]
    session = _session_totals(redis_ns, "scale")
    total = report.total
    assert int(session[b"calls"]) == total.calls == tasks
    assert int(session[b"tokens"]) == total.tokens


async def test_errors_that_are_not_an_outage_are_not_reported_as_one(
    redis_ns: str, tmp_path: Path
) -> None:
    """A refused password is a StoreError naming the cause at open(), not 'Redis
    unreachable'; the store never spools or backs off for it."""
    url = REDIS_URL.replace("redis://", "redis://nobody:wrong-password@")
    store = RedisStore(url, namespace=redis_ns, spool_path=tmp_path / "spool.jsonl")
    with pytest.raises(StoreError) as info:
        await store.open()
    await store.aclose()
    assert "unreachable" not in str(info.value).lower()
    assert "refused" in str(info.value) and "Authentication" in str(info.value)
    assert type(info.value).__name__ == "StoreError"
