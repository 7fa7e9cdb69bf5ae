"""A model first used late (a budget downgrade) is estimated like the calibrated ones (R1.2, R2.3).

tiktoken counts Claude's tokens low; each model's calibration factor corrects it once
that model has answered.  Near a limit the router moves calls to a cheaper tier (R3.2,
R3.3) that may not have answered yet: its calls held tiktoken's raw count, every one
overran its hold, and orchestrators sharing a session budget on Redis went past it
together (three `vibe-engine run` under CPU load: up to 912,000 against 900,000).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from scheduler import BudgetExceededError, Limits, TaskSpec, Usage, VibeConfig
from scheduler.budget import Reservation, TokenCounter, Tracker, resolve_task
from scheduler.budget._tokens import BORROWED_FACTOR_MAX
from scheduler.core import FixedWallClock
from scheduler.store._redis import RedisStore
from tests._redis_helpers import REDIS_URL

MSGS = [{"role": "user", "content": "Please refactor the parser module " * 60}]
LIMIT, OUT, RATIO = 100_000, 1_000, 1.3  # the provider counts 30 % more than tiktoken


def test_r2_3_an_uncalibrated_model_borrows_the_largest_factor() -> None:
    """R2.3: until a model has answered, its estimate uses the largest factor learned for
    another model (BORROWED_FACTOR_MAX before any, at most that); then its own."""
    tc = TokenCounter()
    assert tc.factor("haiku") == BORROWED_FACTOR_MAX
    est = tc.estimate("sonnet", MSGS)
    tc.reconcile(est, round(est.raw * RATIO))
    tc.reconcile(tc.estimate("opus", MSGS), round(est.raw * 1.1))
    assert tc.factor("haiku") == pytest.approx(RATIO, rel=0.01)
    assert tc.estimate("haiku", MSGS).calibrated == pytest.approx(est.raw * RATIO, rel=0.01)
    tc.reconcile(tc.estimate("haiku", MSGS), round(est.raw * 1.2))
    assert tc.factor("haiku") < RATIO  # its own now
    assert tc.factor("opus") < tc.factor("sonnet")


def test_r2_3_a_borrowed_factor_is_kept_within_bounds() -> None:
    """R2.3: a factor far from the tokenizers' difference (a provider counting what the
    prompt does not hold) is lent at most BORROWED_FACTOR_MAX; one below 1.0 as 1.0."""
    tc = TokenCounter()
    est = tc.estimate("sonnet", MSGS)
    tc.reconcile(est, est.raw * 40)
    assert tc.factor("haiku") == BORROWED_FACTOR_MAX
    low = TokenCounter()
    low.reconcile(low.estimate("sonnet", MSGS), est.raw // 2)
    assert low.factor("haiku") == 1.0


async def _tracker(ns: str, tmp: Path, name: str) -> tuple[RedisStore, Tracker]:
    cfg = VibeConfig.model_validate({
        "budgets": {"session": Limits(tokens=LIMIT).model_dump(), "day": {}},
    })
    store = RedisStore(REDIS_URL, namespace=ns, spool_path=tmp / name)
    await store.open()
    tr = Tracker(store, cfg, session_id="shared", wall=FixedWallClock(date(2026, 12, 3)))
    await tr.open()
    spec = TaskSpec(id=name, agent="coder", prompt="Fix the bug in parser")
    await tr.start_task(name, resolve_task(spec, cfg), agent="coder")
    return store, tr


@pytest.mark.redis
@pytest.mark.real_asyncio  # RedisStore is built on redis.asyncio, which runs only on asyncio
async def test_r1_2_calls_downgraded_to_a_new_tier_do_not_overshoot_a_shared_budget(
    redis_ns: str, tmp_path: Path
) -> None:
    """R1.2: two orchestrators (trackers on one Redis namespace) whose calls moved to haiku
    after sonnet was calibrated fill the session with holds of haiku estimates; settled
    at what the provider counts, they stay within the limit (before: 76 holds of 1,305
    tokens settled at 1,396 each, 106,096 against 100,000)."""
    a, ta = await _tracker(redis_ns, tmp_path, "ta")
    b, tb = await _tracker(redis_ns, tmp_path, "tb")
    counter = TokenCounter()
    est = counter.estimate("sonnet", MSGS)
    counter.reconcile(est, round(est.raw * RATIO))  # sonnet answered; haiku never has
    hold = counter.estimate("haiku", MSGS).calibrated + OUT
    held: list[tuple[Tracker, Reservation]] = []
    refused = n = 0
    while refused < 2:  # until each has been refused
        tr = (ta, tb)[n % 2]
        n += 1
        try:
            held.append((tr, await tr.reserve_shared(tr.tasks()[0], model="haiku",
                                                     tokens=hold, cost_usd=0.0)))
        except BudgetExceededError:
            refused += 1
    for tr, r in held:
        used = Usage(round(est.raw * RATIO), OUT)
        await tr.charge(tr.make_event(r.task_id, model="haiku", usage=used), r)
    spent = (await a.totals("session:shared")).tokens
    assert 0.9 * LIMIT <= spent <= LIMIT, (spent, len(held), hold)
    await a.aclose()
    await b.aclose()
