"""R1.5, R1.2: the shared budget hold of a call whose process was killed keeps counting
until the call is charged at its estimate.

A replica on the SQLite file is SIGKILLed with a call in flight: its hold and its
``open_call`` record stay.  A refused hold frees the holds of the host's dead processes
(they must not block the budget for ``hold_ttl_s``); but freed before the running
orchestrator's next recovery round charged the killed call, the budget it held was
spent again by the others, and the estimate charged a minute later put the day over
its limit by that call.  A dead process's holds are freed once its open calls are
charged (their records gone); until then they count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scheduler import BudgetExceededError, TaskSpec, VibeConfig
from scheduler.budget import TaskProfile, Tracker
from scheduler.config import Limits
from scheduler.core import FixedWallClock
from scheduler.runtime._recovery import RECOVER_EVERY_S
from scheduler.store import SqliteStore, Store
from scheduler.store._redis import RedisStore
from scheduler.testing import FRIDAY, ScriptedProvider, build_orchestrator, run_real, run_virtual
from tests._redis_helpers import REDIS_URL
from tests.test_open_call_recovery import DAY_SCOPE, ESTIMATE, kill, killed_replica

LIMIT = ESTIMATE + 2_000  # room for the killed call and 19 calls of 101 tokens


class _KillsThenSpends:
    """Kills the other replica, then calls until the day refuses, then waits for the
    recovery round."""

    proc: Any = None

    async def run(self, ctx: Any) -> None:
        kill(_KillsThenSpends.proc)
        for _ in range(40):
            await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=100)


def test_r1_5_a_killed_replicas_hold_counts_until_its_call_is_charged(
        tmp_path: Path) -> None:
    """R1.5, R1.2: an orchestrator on the SQLite file of a replica killed mid-call spends
    the day up to its limit: the day's total, the killed call's estimate with it, stays
    within the limit (before: over it by the estimate, 1,234 tokens -- the dead hold was
    freed at the first refusal, 20 s after the kill, and the estimate charged at 60 s)."""
    state = tmp_path / "state"
    state.mkdir()
    db = state / "vibe.db"
    config = VibeConfig(state_dir=state, store="sqlite", session_id="live",
                        budgets={"session": {}, "day": {"tokens": LIMIT},
                                 "weekend_day_cost_usd": None},
                        alerts={"decision_timeout_s": 3 * RECOVER_EVERY_S})
    orch = build_orchestrator({"a": _KillsThenSpends}, config=config,
                              provider=ScriptedProvider(latency_s=1.0, prompt=1, completion=100))

    async def main() -> tuple[int, list[str]]:
        await orch.run([TaskSpec(id="w", agent="a", prompt="x")])
        store = SqliteStore(db)
        await store.open()
        try:
            events = await store.events()
            return ((await store.totals(DAY_SCOPE)).tokens,
                    [e.event_id for e in events if e.event_id.endswith(":estimate")])
        finally:
            await store.aclose()

    with killed_replica("sqlite", str(db)) as proc:
        _KillsThenSpends.proc = proc
        day, estimates = run_virtual(main)
    assert len(estimates) == 1, estimates  # the killed call, charged while the run went on
    assert day <= LIMIT, (day, LIMIT)


async def _refused_until_recovered(store: Store, proc: Any) -> list[str]:
    """A live tracker on the killed replica's store, room for the killed call and one of
    500 tokens: a call of 1,000 is refused while the killed call is open (before: the
    dead hold was freed, and the call granted); one of 500 is granted once it is
    charged (the dead hold freed then)."""
    tracker = Tracker(store, VibeConfig(budgets={"session": {}, "day": {"tokens": ESTIMATE + 500},
                                                 "weekend_day_cost_usd": None}),
                      session_id="live", wall=FixedWallClock(FRIDAY))
    await store.open()
    await tracker.open()
    profile = TaskProfile("code_modification", "moderate", Limits(), False, False)
    await tracker.start_task("w", profile, agent="a")
    kill(proc)
    out: list[str] = []
    for step, tokens in (("killed", 1_000), ("recovered", 500)):
        if step == "recovered":
            await tracker.recover_open_calls()
        try:
            res = await tracker.reserve_shared("w", model="sonnet", tokens=tokens, cost_usd=0.0)
        except BudgetExceededError:
            out.append(f"{step}: refused")
        else:
            tracker.cancel(res)
            out.append(f"{step}: granted")
    await store.aclose()
    return out


@pytest.mark.redis
def test_r1_5_on_redis_a_killed_replicas_hold_counts_until_its_call_is_charged(
        tmp_path: Path, redis_ns: str) -> None:
    """R1.5: on Redis, a call of 500 tokens with room for the killed call's estimate and
    itself is refused while the killed call is open (before: granted, the dead hold freed
    at the refusal, and the estimate charged on top), granted once it is charged."""
    with killed_replica("redis", redis_ns, str(tmp_path / "spool.jsonl")) as proc:
        store = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "live-spool")
        steps = run_real(_refused_until_recovered, store, proc)
    assert steps == ["killed: refused", "recovered: granted"]


def test_r1_5_on_sqlite_a_killed_replicas_hold_counts_until_its_call_is_charged(
        tmp_path: Path) -> None:
    """R1.5: as on Redis, with the replicas on one SQLite file."""
    db = tmp_path / "vibe.db"
    with killed_replica("sqlite", str(db)) as proc:
        steps = run_virtual(_refused_until_recovered, SqliteStore(db), proc)
    assert steps == ["killed: refused", "recovered: granted"]
