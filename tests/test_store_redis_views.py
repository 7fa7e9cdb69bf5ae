"""R1.2/R2.1 on Redis: each orchestrator's own view of its scopes counts every charge once.

A Redis hold brings the store's latest totals of its scopes (every replica's spend) into
the tracker's local scopes.  That snapshot is read inside the hold's script, so it raced
with this process's own charges: a charge committed after the read but added locally
before the hold's caller resumed was overwritten (lost), and a snapshot that already held
a charge not yet added locally had it added a second time.  The local scopes feed the
70/90/100 % alerts, routing's budget pressure, ``status`` and ``usage.json``.  The
orchestrator and serve runs below make a hundred calls and more at once, which meets
both orders; one test takes each order in turn, deterministically.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import cast

import anthropic
import anyio
import pytest

from agents.builtin import QuestionAnswerAgent
from agents.fake_api import FakeAnthropicServer
from scheduler import Limits, TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.budget._scope_state import ScopeState
from scheduler.core import FixedWallClock, Totals
from scheduler.runtime import Orchestrator
from scheduler.store import task_day_scope
from scheduler.store._ledger import ScopeLimit
from scheduler.store._redis import RedisStore
from scheduler.store._redis_lua import totals_from_hash
from scheduler.testing import ScriptedProvider
from tests._anthropic_helpers import fake_api
from tests._redis_helpers import REDIS_URL, redis_or_skip
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.redis, pytest.mark.real_asyncio]  # RedisStore runs on redis.asyncio
CALL = 150  # tokens of each ScriptedProvider call (100 prompt + 50 completion)


def _orchestrator(tmp_path: Path, ns: str, session: str) -> Orchestrator:
    cfg = VibeConfig.model_validate({
        "state_dir": str(tmp_path / session),
        "store": f"{REDIS_URL}?namespace={ns}",
        "session_id": session,
        # limits far above what the runs spend: every call is held, none refused
        "budgets": {"session": {"tokens": 10_000_000}, "day": {"tokens": 10_000_000},
                    "weekend_day_cost_usd": None},
        # no provider pacing: the calls (and their holds and charges) overlap
        "allocator": {"pools": {"anthropic": {"tokens_per_minute": None,
                                              "requests_per_minute": None,
                                              "concurrent": 50}}},
    })
    return Orchestrator(cfg, provider=ScriptedProvider(latency_s=0.0),
                        agents={"qa": QuestionAnswerAgent},
                        wall=FixedWallClock(date(2026, 11, 27)))


async def _run(orch: Orchestrator, session: str, tasks: int) -> None:
    report = await orch.run([TaskSpec(id=f"{session}-q{j}", agent="qa", prompt="What is this?")
                             for j in range(tasks)])
    assert [o.status for o in report.outcomes.values()] == ["completed"] * tasks


def _stored(ns: str, scope: str) -> Totals:
    client = redis_or_skip()
    try:
        raw = cast(dict[bytes, bytes], client.hgetall(f"vibe:{{{ns}}}:tot:{scope}"))
        return totals_from_hash({k.decode(): v.decode() for k, v in raw.items()})
    finally:
        client.close()


def _counted(scope: ScopeState) -> tuple[int, int, dict[str, int], float]:
    return _summary(scope.totals)


def _counted_in_store(ns: str, scope: ScopeState) -> tuple[int, int, dict[str, int], float]:
    return _summary(_stored(ns, scope.name))


def _summary(t: Totals) -> tuple[int, int, dict[str, int], float]:
    return t.tokens, t.calls, t.tokens_by_model, round(t.cost_usd, 9)


async def test_r2_1_one_orchestrator_on_redis_counts_each_of_its_calls_once(
        redis_ns: str, tmp_path: Path) -> None:
    """R2.1: at quiescence the session and day scopes of an orchestrator on Redis hold
    exactly what Redis holds -- none of its concurrent charges lost or counted twice."""
    tasks = 150
    orch = _orchestrator(tmp_path, redis_ns, "s0")
    await _run(orch, "s0", tasks)
    session, day = orch.tracker.session, orch.tracker.day_scope()
    assert _counted_in_store(redis_ns, session)[:2] == (tasks * CALL, tasks)
    assert _counted(session) == _counted_in_store(redis_ns, session)
    assert _counted(day) == _counted_in_store(redis_ns, day)


async def test_r1_2_replicas_on_redis_see_each_other_and_count_their_own_once(
        redis_ns: str, tmp_path: Path) -> None:
    """R1.2 across replicas: two orchestrators run at once on one namespace.  Each one's
    session (its own calls only) equals what Redis holds; its day counts each of its own
    calls once and as much of the other's as it has seen -- never more than the day."""
    tasks = 120
    orchs = {s: _orchestrator(tmp_path, redis_ns, s) for s in ("a", "b")}
    async with anyio.create_task_group() as tg:
        for s, orch in orchs.items():
            tg.start_soon(_run, orch, s, tasks)
    day_stored = _stored(redis_ns, orchs["a"].tracker.day_scope().name)
    assert (day_stored.tokens, day_stored.calls) == (2 * tasks * CALL, 2 * tasks)
    for orch in orchs.values():
        session, day = orch.tracker.session, orch.tracker.day_scope()
        assert _counted(session) == _counted_in_store(redis_ns, session)
        assert session.totals.tokens <= day.totals.tokens <= day_stored.tokens
        assert day.totals.tokens % CALL == 0 and day.totals.calls == day.totals.tokens // CALL
    # the replicas ran at once: the holds brought the other's spend into each day's view
    assert any(o.tracker.day_scope().totals.tokens > o.tracker.session.totals.tokens
               for o in orchs.values())


async def test_r2_1_a_hold_snapshot_loses_and_doubles_no_charge_in_either_order(
        redis_ns: str, tmp_path: Path) -> None:
    """R2.1, the two orders the race above takes, one by one on the real Redis: a charge
    recorded after the hold read its snapshot but added first is kept; a charge the
    snapshot already holds is not added again.  The other process's spend comes in."""
    store = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "spool")
    await store.open()
    try:
        day = ScopeState("day:2026-11-27", Limits())
        limit = (ScopeLimit(day.name, tokens=1_000_000),)
        other = await store.commit(_event("other-1", 1_000))  # another replica's call
        assert other == (1, (1, 1, 1))  # its task, session and day reached version 1

        held = await store.try_reserve("h1", limit, model="", tokens=10, cost_usd=0.0)
        mine = _event("mine-1")
        fresh, versions = (await store.commit(mine))[:2]  # recorded after the hold's read ...
        assert fresh == 1 and versions[-1] == 2
        day.charge(mine, versions[-1])  # ... and added before the hold's caller resumed
        assert held.versions is not None and held.versions[day.name] == 1
        day.adopt(held.totals[day.name], held.versions[day.name])
        assert day.totals.tokens == 150  # kept: the snapshot (the other's 1,050) is older

        mine = _event("mine-2")
        _, versions = (await store.commit(mine))[:2]
        held = await store.try_reserve("h2", limit, model="", tokens=10, cost_usd=0.0)
        assert held.versions is not None
        day.adopt(held.totals[day.name], held.versions[day.name])  # holds mine-2 already
        day.charge(mine, versions[-1])
        assert (day.totals.tokens, day.version) == (1_350, 3) == (
            (await store.totals(day.name)).tokens, held.versions[day.name])
    finally:
        await store.aclose()


def _event(event_id: str, prompt_tokens: int = 100) -> UsageEvent:
    return UsageEvent(event_id=event_id, task_id=event_id, session_id=event_id[:5],
                      day="2026-11-27", at=1_700_000_000.0, agent="qa", model="sonnet",
                      usage=Usage(prompt_tokens, 50))


async def test_r1_2_serve_on_redis_counts_each_call_once_in_its_key_scopes(
        fake_api: FakeAnthropicServer, redis_ns: str, tmp_path: Path) -> None:
    """R1.2 through ``vibe-engine serve`` on Redis: concurrent calls of one key, grouped
    into tasks (task ⊂ key ⊂ the key's day ⊂ session ⊂ day, every one held), are each
    counted once in the key's scope, its day budget's, the session's and the day's."""
    key = {"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "reject",
           "budget": {"tokens": 10_000_000}, "day_budget": {"tokens": 10_000_000}}
    data = {**serve_config(tmp_path, fake_api.base_url, [key]),
            "store": f"{REDIS_URL}?namespace={redis_ns}", "session_id": "replica-a",
            "allocator": {"pools": {"anthropic": {"tokens_per_minute": None,
                                                  "requests_per_minute": None,
                                                  "concurrent": 50}}}}
    calls = 120
    async with serving(data, FixedWallClock(datetime(2026, 11, 27, 12, tzinfo=UTC))) as run:
        async with anthropic.AsyncAnthropic(base_url=run.url, max_retries=0,
                                            api_key=CLIENT_KEYS["VIBE_KEY_A"]) as client:

            async def ask(i: int) -> None:
                await client.messages.create(
                    model="claude-haiku-4-5", max_tokens=50,
                    messages=[{"role": "user", "content": "Explain the retry loop."}],
                    extra_headers={"x-vibe-task": f"t{i % 4}"})

            async with anyio.create_task_group() as tg:
                for i in range(calls):
                    tg.start_soon(ask, i)
        tracker = run.served.orchestrator.tracker
        await run.settled("alpha", calls)
        scopes = [tracker.task_scope("alpha"), tracker.session, tracker.day_scope(),
                  tracker.scope_named("alpha", task_day_scope("alpha", "2026-11-27"))]
        assert fake_api.requests == calls
        for scope in scopes:
            assert scope is not None
            assert _counted(scope) == _counted_in_store(redis_ns, scope), scope.name
            assert scope.totals.calls == calls
