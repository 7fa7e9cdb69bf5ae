"""R7.3: a misbehaving agent plugin ends its own task, never the run: here one that calls
``sys.exit()`` (a wrapped command-line tool's ``main``), which took the whole run down
with it -- every other task interrupted, no ``run_ended``, the process gone with the
plugin's exit code and not one line saying why."""

from __future__ import annotations

import sys
from pathlib import Path

from agents.builtin import QuestionAnswerAgent
from scheduler import TaskSpec
from scheduler.runtime import AgentContext
from tests._helpers import OrchestratorFactory


class ExitingAgent:
    async def run(self, ctx: AgentContext) -> dict[str, int]:
        await ctx.llm.complete([{"role": "user", "content": "What is a lease?"}], max_tokens=50)
        sys.exit(3)


async def test_r7_3_an_agent_calling_sys_exit_fails_its_task_and_the_run_goes_on(
    make_orchestrator: OrchestratorFactory, tmp_path: Path
) -> None:
    """R7.3: the task of a plugin that raised ``SystemExit`` fails with the reason; the
    other task completes, the calls it made are charged and its leases are back."""
    orch = make_orchestrator({"exits": ExitingAgent, "qa": QuestionAnswerAgent})
    report = await orch.run([TaskSpec(id="x", agent="exits", prompt="What is x?"),
                             TaskSpec(id="q", agent="qa", prompt="What is a lease?")])
    failed = report.outcomes["x"]
    assert failed.status == "failed"
    assert failed.reason.startswith("agent crashed: SystemExit: 3"), failed.reason
    assert failed.usage.calls == failed.attempts  # each attempt (R4.3 retries) charged
    assert report.outcomes["q"].status == "completed"
    assert orch.allocator.statistics().leases == 0
