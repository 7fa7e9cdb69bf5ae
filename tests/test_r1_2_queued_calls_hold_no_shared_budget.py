"""R1.2, R3.4, R5.3 across processes: a call waiting for its provider lease holds no budget.

Two orchestrators share one day budget on one store (a SQLite file, or Redis).  One of
them runs 200 one-call tasks on a pool of 2 concurrent calls: 198 calls wait for their
turn.  Each call used to hold its estimate from its admission, before its lease, so
that process held the whole day ($0.099 of $0.10) within a moment while nothing was
spent, and the other process's first call was refused at 0.2 s ("used 0.09906").  Now a
call holds its estimate once it has its lease (before it is sent: nothing is overspent),
so only what is truly in flight counts, and a refusal states what was spent and what
calls under way hold, apart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import TaskSpec
from scheduler.config import VibeConfig
from scheduler.core import BudgetExceededError
from scheduler.testing import FRIDAY, ScriptedProvider, build_orchestrator, run_real, run_virtual
from tests._redis_helpers import REDIS_URL

DAY = f"day:{FRIDAY.isoformat()}"
CALL_COST = 0.001524  # a call's estimate: 108 tokens in, 100 out on the default route


class _One:
    async def run(self, ctx: Any) -> None:
        await ctx.llm.complete([{"role": "user", "content": "x"}], max_tokens=100)


class _Ten:
    """Ten calls one after the other; a refusal ends the task (``on_limit = "reject"``)."""

    async def run(self, ctx: Any) -> dict[str, Any]:
        for made in range(10):
            try:
                await ctx.llm.complete([{"role": "user", "content": "y"}], max_tokens=100)
            except BudgetExceededError as exc:
                return {"made": made, "refused": str(exc)}
        return {"made": 10, "refused": None}


def _two_processes(tmp_path: Path, url: str, limit: float, latency_s: float,
                   runner: Callable[..., Any]) -> tuple[dict[str, Any], float]:
    """What the second orchestrator's task made, and the day's spend when it ended."""

    def config(name: str, concurrent: int) -> VibeConfig:
        return VibeConfig(
            state_dir=tmp_path / name, store=url, session_id=name,
            budgets={"session": {}, "day": {"cost_usd": limit}, "weekend_day_cost_usd": None},
            allocator={"pools": {"anthropic": {"concurrent": concurrent}}})

    async def main() -> tuple[dict[str, Any], float]:
        calls = ScriptedProvider(latency_s=latency_s, prompt=1, completion=100)
        busy = build_orchestrator({"one": _One}, config=config("busy", 2), provider=calls)
        other = build_orchestrator({"ten": _Ten}, config=config("other", 50),
                                   provider=ScriptedProvider(latency_s=latency_s, prompt=1,
                                                             completion=100))
        async with anyio.create_task_group() as tg:
            tg.start_soon(busy.run, [TaskSpec(id=f"t{i}", agent="one", prompt="x")
                                     for i in range(200)])
            for _ in range(1000):  # until the busy one's calls queued, 2 in flight
                if calls.in_flight == 2:
                    break
                await anyio.sleep(latency_s / 100)
            report = await other.run([TaskSpec(id="b", agent="ten", prompt="y",
                                               on_limit="reject")])
            spent = (await busy.tracker.store.totals(DAY)).cost_usd
            for i in range(200):  # the busy one's run ends (its calls are not the point)
                busy.abort(f"t{i}", "the test is over", requeue=False)
        return report.outcomes["b"].result, spent

    result: tuple[dict[str, Any], float] = runner(main)
    return result


def test_r1_2_r5_3_queued_calls_of_one_process_do_not_lock_another_out_on_sqlite(
        tmp_path: Path) -> None:
    """R1.2, R5.3: 200 calls queued for a pool of 2 in one process, a day of $0.10 on one
    SQLite file: the other process makes its 10 calls (before: refused at its first,
    with $0 spent), and the day is not overspent."""
    made, spent = _two_processes(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}", 0.10,
                                 1.0, run_virtual)
    assert made == {"made": 10, "refused": None}
    assert 0 < spent <= 0.10


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_r1_2_a_refusal_counts_what_is_in_flight_and_says_it_apart_from_the_spend(
        tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    """R1.2: a day of $0.004 (2.6 calls) while the busy process's 2 leased calls are in
    flight ($0.003048 held) and nothing is spent: the other process's call is refused --
    spend plus what is truly in flight -- and the refusal says "spent 0 + held by calls
    under way 0.003048" (before: "used 0.003048", as if spent)."""
    if store == "sqlite":
        url, latency, runner = f"sqlite:///{tmp_path / 'shared.db'}", 1.0, run_virtual
    else:
        url = f"{REDIS_URL}?namespace={request.getfixturevalue('redis_ns')}"
        latency, runner = 0.5, run_real
    made, spent = _two_processes(tmp_path, url, 0.004, latency, runner)
    assert made["made"] == 0, made
    assert (f"cost_usd spent 0 + held by calls under way {2 * CALL_COST:g} + requested "
            f"{CALL_COST:g} > limit 0.004") in made["refused"], made
    assert spent <= 0.004


def test_r1_2_r5_3_queued_calls_of_one_process_do_not_lock_another_out_on_redis(
        tmp_path: Path, redis_ns: str) -> None:
    """R1.2, R5.3: as on SQLite, the two orchestrators on one Redis namespace."""
    made, spent = _two_processes(tmp_path, f"{REDIS_URL}?namespace={redis_ns}", 0.10,
                                 0.05, run_real)
    assert made == {"made": 10, "refused": None}
    assert 0 < spent <= 0.10
