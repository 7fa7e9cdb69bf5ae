"""R3.4: a task's pause does not fail its other calls, admitted before it.

A task making calls at once (an agent's gathered calls, or a ``serve`` key's concurrent
requests) whose one call pauses it at a limit: the pause gives back the task's leases
(``on_pause`` → ``Allocator.release_holder``), which also withdraws the lease waits of
its calls already admitted -- their budget held -- and each of those failed with
``LeaseError: holder released`` (a 500 to a ``serve`` client) instead of waiting for the
decision like the call that paused (``Admission.lease_again``)."""

from __future__ import annotations

from pathlib import Path

import anyio

from agents import AgentContext
from scheduler import TaskSpec
from scheduler.core import Completion, CompletionRequest, Usage
from scheduler.testing import build_orchestrator, run_virtual

MESSAGES = [{"role": "user", "content": "hello there"}]


class _Slow:
    async def complete(self, request: CompletionRequest) -> Completion:
        await anyio.sleep(1.0)
        return Completion("ok", Usage(100, 50), request.model)

    async def aclose(self) -> None:
        return None


class _Gathered:
    """Five small calls at once (one lease: four wait for it), then one over the budget."""

    async def run(self, ctx: AgentContext) -> str:
        outcomes: list[str] = []

        async def one(max_tokens: int) -> None:
            try:
                await ctx.llm.complete(MESSAGES, max_tokens=max_tokens)
                outcomes.append("ok")
            except Exception as exc:  # what each call ended with is the point
                outcomes.append(type(exc).__name__)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one, 200)
            await anyio.sleep(0.01)
            tg.start_soon(one, 5000)
        return ",".join(sorted(outcomes))


def test_r3_4_a_pause_does_not_fail_the_tasks_calls_admitted_before_it(
        tmp_path: Path) -> None:
    async def main() -> str:
        orch = build_orchestrator(
            {"a": _Gathered}, state_dir=tmp_path, provider=_Slow(),
            budgets={"session": {"tokens": 3000}, "day": {}, "weekend_day_cost_usd": None},
            alerts={"decision_timeout_s": 5.0},
            allocator={"pools": {"anthropic": {"concurrent": 1}}},
        )
        report = await orch.run([TaskSpec(id="t", agent="a", prompt="x")])
        return str(report.outcomes["t"].result)

    outcomes = run_virtual(main).split(",")
    assert "LeaseError" not in outcomes, outcomes
