"""The tracker: nested scopes, admission, remaining, persistence (R1.1, R1.2, R1.5, R2.5, R2.6)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from scheduler import BudgetExceededError, Limits, TaskSpec, Usage, VibeConfig, config_from_dict
from scheduler.budget import Tracker, resolve_task
from scheduler.core import FixedWallClock
from scheduler.store import MemoryStore, SqliteStore, Store
from scheduler.testing import FRIDAY
from tests._helpers import SATURDAY, tracker_with_task

pytestmark = pytest.mark.anyio


def _spec(budget: Limits | None = None, tid: str = "t1") -> TaskSpec:
    return TaskSpec(id=tid, agent="coder", prompt="Fix the bug", budget=budget)


async def _charge(tr: Tracker, task: str = "t1", model: str = "sonnet", prompt: int = 100,
                  completion: int = 0, cost: float = 0.0) -> None:
    ev = tr.make_event(task, model=model if (prompt or completion) else "",
                       usage=Usage(prompt, completion), cost_usd=cost)
    await tr.charge(ev)


@pytest.mark.parametrize(
    ("limits", "kwargs", "dimension"),
    [
        (Limits(tokens=1000), {"tokens": 1001}, "tokens"),
        (Limits(cost_usd=0.5), {"cost_usd": 0.6}, "cost_usd"),
        (Limits(file_edits=0), {"file_edits": 1}, "file_edits"),
        (Limits(shell_commands=0), {"shell_commands": 1}, "shell_commands"),
        (Limits(dangerous_commands=0), {"dangerous_commands": 1}, "dangerous_commands"),
        (Limits(tokens_by_model={"opus": 10}), {"tokens": 11, "model": "opus"}, "tokens:opus"),
    ],
)
async def test_r1_1_every_dimension_is_enforced(
    store: Store, limits: Limits, kwargs: dict[str, object], dimension: str
) -> None:
    """R1.1: tokens, per-model tokens, cost and operation counts each stop a request."""
    tr = await tracker_with_task(store, task=_spec(limits))
    with pytest.raises(BudgetExceededError) as info:
        tr.check("t1", **kwargs)  # type: ignore[arg-type]
    assert info.value.dimension == dimension
    assert info.value.scope == "task:t1"


async def test_r1_1_a_call_is_refused_for_its_own_limits_before_the_reserved_ones(
    store: Store,
) -> None:
    """R1.1: one check of a model call: over both the task's token limit and the
    session's prompt limit, the call is refused for its prompt (the pause names it; a
    critical section's overdraft covers only what a reservation holds); over the token
    limit alone, for its tokens."""
    cfg = config_from_dict({"budgets": {"session": {"prompt_tokens": 50}}})
    tr = await tracker_with_task(store, cfg, task=_spec(Limits(tokens=100)))
    with pytest.raises(BudgetExceededError) as info:
        tr.check("t1", model="sonnet", tokens=300, prompt_tokens=240, completion_tokens=60)
    assert (info.value.scope, info.value.dimension) == ("session:s1", "prompt_tokens")
    with pytest.raises(BudgetExceededError) as info:
        tr.check("t1", model="sonnet", tokens=300, prompt_tokens=40, completion_tokens=60)
    assert (info.value.scope, info.value.dimension) == ("task:t1", "tokens")
    tr.check("t1", model="sonnet", tokens=100, prompt_tokens=40, completion_tokens=60)


async def test_r1_1_token_kinds_limited_separately(store: Store) -> None:
    """R1.1: prompt / completion / cache tokens are dimensions of their own."""
    tr = await tracker_with_task(store, task=_spec(Limits(cache_read_tokens=100)))
    ev = tr.make_event("t1", model="sonnet", usage=Usage(0, 0, 100, 0, 0))
    crossings = await tr.charge(ev)
    assert {(c.dimension, c.level) for c in crossings} >= {("cache_read_tokens", "exceeded")}


async def test_r1_1_wall_time_per_task() -> None:
    """R1.1/R1.3: a task past its wall-time budget is stopped (virtual clock)."""

    async def main() -> str:
        tr = await tracker_with_task(MemoryStore(), task=_spec(Limits(time_s=300)))
        tr.check("t1", tokens=1)
        await anyio.sleep(299)
        tr.check("t1", tokens=1)
        await anyio.sleep(2)
        with pytest.raises(BudgetExceededError) as info:
            tr.check("t1", tokens=1)
        return info.value.dimension

    assert await main() == "time_s"


async def test_r1_2_tightest_scope_decides(store: Store) -> None:
    """R1.2: the session limit stops a call the task budget would allow."""
    cfg = config_from_dict({"budgets": {"session": {"tokens": 500}}})
    tr = await tracker_with_task(store, cfg, task=_spec(Limits(tokens=10_000)))
    await _charge(tr, prompt=450)
    with pytest.raises(BudgetExceededError) as info:
        tr.check("t1", tokens=100)
    assert info.value.scope == "session:s1"
    assert (await store.totals("day:2026-11-27")).tokens == 450


async def test_r1_2_reservations_stop_concurrent_overspend(store: Store) -> None:
    """R1.2: estimates of calls in flight count against every scope."""
    tr = await tracker_with_task(store, task=_spec(Limits(tokens=1000)))
    r1 = tr.reserve("t1", model="sonnet", tokens=600, cost_usd=0.0)
    with pytest.raises(BudgetExceededError):
        tr.reserve("t1", model="sonnet", tokens=600, cost_usd=0.0)
    tr.cancel(r1)
    tr.reserve("t1", model="sonnet", tokens=600, cost_usd=0.0)


async def test_r1_3_per_model_session_caps(store: Store) -> None:
    """R1.3: opus is capped at 50,000 tokens per session by default."""
    tr = await tracker_with_task(store, task=_spec(Limits(tokens=1_000_000)))
    await _charge(tr, model="opus", prompt=49_000)
    tr.check("t1", model="sonnet", tokens=5_000)
    with pytest.raises(BudgetExceededError) as info:
        tr.check("t1", model="opus", tokens=5_000)
    assert info.value.dimension == "tokens:opus" and info.value.scope == "session:s1"


async def test_r1_5_new_session_starts_from_the_days_spend(tmp_path: Path) -> None:
    """R1.5: a restart (new process, new session) resumes the day's totals from SQLite."""
    cfg = config_from_dict({"budgets": {"day": {"cost_usd": 1.0}}})
    s1 = SqliteStore(tmp_path / "v.db")
    await s1.open()
    tr1 = await tracker_with_task(s1, cfg, session="morning")
    await _charge(tr1, cost=0.8)
    await s1.aclose()

    s2 = SqliteStore(tmp_path / "v.db")
    await s2.open()
    tr2 = await tracker_with_task(s2, cfg, session="afternoon",
                                  task=_spec(tid="t2"))
    assert tr2.day_scope().totals.cost_usd == pytest.approx(0.8)
    assert tr2.session.totals.cost_usd == 0
    with pytest.raises(BudgetExceededError) as info:
        tr2.check("t2", cost_usd=0.3)
    assert info.value.scope == "day:2026-11-27"
    await s2.aclose()


async def test_r1_5_saturday_restart_gets_weekend_budget(tmp_path: Path) -> None:
    """R1.3/R1.5: a day budget charged on Saturday survives a restart, against $5."""
    s1 = SqliteStore(tmp_path / "v.db")
    await s1.open()
    tr1 = await tracker_with_task(s1, day=SATURDAY)
    await _charge(tr1, cost=4.5)
    await s1.aclose()
    s2 = SqliteStore(tmp_path / "v.db")
    await s2.open()
    tr2 = await tracker_with_task(s2, session="s2", day=SATURDAY, task=_spec(tid="t2"))
    day = tr2.day_scope()
    assert day.limits.cost_usd == 5.0
    assert day.totals.cost_usd == pytest.approx(4.5)
    with pytest.raises(BudgetExceededError):
        tr2.check("t2", cost_usd=0.6)
    await s2.aclose()


async def test_r2_5_remaining_tokens_actions_cost_time(store: Store) -> None:
    """R2.5: tokens left, further actions (left ÷ average per action), cost and time left."""
    tr = await tracker_with_task(
        store, task=_spec(Limits(tokens=10_000, cost_usd=1.0, time_s=600))
    )
    await _charge(tr, prompt=1500, completion=500, cost=0.1)
    await _charge(tr, prompt=1500, completion=500, cost=0.1)
    rem = tr.remaining("t1")
    assert rem.tokens == 6000
    assert rem.avg_tokens_per_action == 2000
    assert rem.actions == 3
    assert rem.cost_usd == pytest.approx(0.8)
    assert rem.time_s is not None and 599 <= rem.time_s <= 600


async def test_r2_6_usage_json_is_written(tmp_path: Path) -> None:
    """R2.6: .vibe-engine/tasks/<id>/usage.json holds usage, budget and timestamp."""
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    cfg = VibeConfig(state_dir=tmp_path)
    tr = Tracker(store, cfg, session_id="s1", wall=FixedWallClock(FRIDAY), state_dir=tmp_path)
    await tr.open()
    spec = _spec()
    await tr.start_task("t1", resolve_task(spec, cfg), agent="coder")
    await _charge(tr, prompt=300, completion=200, cost=0.01)
    tr.finish_task("t1")
    doc = json.loads((tmp_path / "tasks" / "t1" / "usage.json").read_text())
    assert doc["usage"]["tokens"] == 500
    assert doc["budget"]["tokens"] == 80_000  # bug_fix row
    assert doc["timestamp"].startswith("2026-11-27")
    assert doc["status"] == "completed"
    await store.aclose()


async def test_r3_1_crossings_fire_once_each(store: Store) -> None:
    """R3.1: 70/90/100 % crossings are reported once per crossing."""
    tr = await tracker_with_task(store, task=_spec(Limits(tokens=1000)))
    levels = []
    for _ in range(12):
        ev = tr.make_event("t1", model="haiku", usage=Usage(100, 0))
        levels += [c.level for c in await tr.charge(ev) if c.scope == "task:t1"]
    assert levels == ["warning", "critical", "exceeded"]


async def test_r2_1_idempotent_charge_counts_once(store: Store) -> None:
    """R2.1: a retried settlement with the same event id is charged once."""
    tr = await tracker_with_task(store)
    ev = tr.make_event("t1", model="haiku", usage=Usage(100, 10))
    await tr.charge(ev)
    await tr.charge(ev)
    assert tr.task_scope("t1").totals.tokens == 110
    assert (await store.totals("task:t1")).tokens == 110


async def test_r1_5_restart_with_the_same_session_id_keeps_charging(tmp_path: Path) -> None:
    """R1.5: a restarted orchestrator reusing its session id is not mistaken for a retry."""
    totals = []
    for _ in range(2):
        store = SqliteStore(tmp_path / "v.db")
        await store.open()
        tr = await tracker_with_task(store, session="fixed")
        await _charge(tr, prompt=100)
        totals.append(tr.session.totals.tokens)
        await store.aclose()
    assert totals == [100, 200]


@pytest.mark.parametrize(
    ("limits", "prompt", "cost", "expected"),
    [
        (Limits(tokens=1000, cost_usd=1.0), 100, 0.5, 0.5),  # cost is the worst
        (Limits(tokens=1000, cost_usd=1.0), 800, 0.1, 0.8),  # tokens are
        (Limits(tokens_by_model={"sonnet": 200}), 150, 0.0, 0.75),  # a per-model cap is
        (Limits(tokens=None, cost_usd=None), 500, 0.3, 0.3 / 20),  # the day's $20 is
    ],
)
async def test_r3_2_fraction_used_is_the_worst_limited_dimension(
    store: Store, limits: Limits, prompt: int, cost: float, expected: float
) -> None:
    """R3.2/R4.2: the budget fraction routing reads before every call (#22: read from each
    scope's totals in one pass) is the largest used ÷ limit over every limited dimension
    of the task's scopes, per-model caps included."""
    tr = await tracker_with_task(store, task=_spec(limits))
    await _charge(tr, prompt=prompt, cost=cost)
    assert tr.fraction_used("t1") == pytest.approx(expected)
    worst = max(s.max_fraction() for s in tr.scopes("t1"))
    assert worst == pytest.approx(expected)
