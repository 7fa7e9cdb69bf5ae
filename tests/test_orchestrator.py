"""The orchestrator and the governed agent context (R7.1, R1.1, R2.1, R2.6)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents import AgentContext, is_dangerous
from agents.builtin import QuestionAnswerAgent, StepsAgent
from scheduler import ConfigError, Limits, TaskSpec
from scheduler.core import ProviderTimeoutError
from scheduler.runtime import Orchestrator, RunReport
from scheduler.testing import ScriptedProvider
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio


AGENTS = {"qa": QuestionAnswerAgent, "coder": StepsAgent}


async def test_r7_1_many_agents_share_one_event_loop(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R7.1: 50 agent coroutines run concurrently in one task group."""
    provider = ScriptedProvider(latency_s=0.05)
    orch = make_orchestrator(AGENTS, provider=provider)
    specs = [TaskSpec(id=f"q{i}", agent="qa", prompt="What is this?") for i in range(50)]
    report = await orch.run(specs)
    assert all(o.status == "completed" for o in report.outcomes.values())
    assert provider.max_in_flight == 50
    assert report.total.calls == 50
    assert report.total.tokens == 50 * 150


@pytest.mark.real_asyncio  # the coder agent runs its shell command as a real process
async def test_r2_1_every_call_recorded_and_usage_json_written(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.1/R2.6: each call's usage is charged and usage.json written per task."""
    orch = make_orchestrator(AGENTS)
    spec = TaskSpec(id="c1", agent="coder", prompt="Fix the crash", params={"steps": 2})
    report = await orch.run([spec])
    out = report.outcomes["c1"]
    assert out.status == "completed", out.reason
    assert (out.usage.calls, out.usage.file_edits, out.usage.shell_commands) == (2, 2, 1)
    doc = json.loads((tmp_path / "tasks" / "c1" / "usage.json").read_text())
    assert doc["usage"]["calls"] == 2 and doc["status"] == "completed"
    assert (tmp_path / "workspace" / "c1" / "step_2.py").exists()


async def test_dependencies_wait_for_results(make_orchestrator: OrchestratorFactory) -> None:
    order: list[str] = []

    class Recorder:
        async def run(self, ctx: AgentContext) -> str:
            for dep in ctx.task.depends_on:
                assert await ctx.wait_for(dep) == dep
            order.append(ctx.task.id)
            return ctx.task.id

    orch = make_orchestrator({"r": Recorder})
    report = await orch.run([
        TaskSpec(id="b", agent="r", depends_on=("a",)),
        TaskSpec(id="a", agent="r"),
        TaskSpec(id="c", agent="r", depends_on=("b",)),
    ])
    assert order == ["a", "b", "c"]
    assert {o.status for o in report.outcomes.values()} == {"completed"}


async def test_crashed_agent_fails_alone_with_reason(
    make_orchestrator: OrchestratorFactory,
) -> None:
    class Crasher:
        async def run(self, ctx: AgentContext) -> None:
            await ctx.llm.complete([{"role": "user", "content": "hi"}])
            raise RuntimeError("boom")

    orch = make_orchestrator({"x": Crasher, "qa": QuestionAnswerAgent})
    report = await orch.run([TaskSpec(id="x1", agent="x"), TaskSpec(id="q1", agent="qa")])
    assert report.outcomes["x1"].status == "failed"
    assert "RuntimeError: boom" in report.outcomes["x1"].reason
    assert report.outcomes["x1"].usage.calls == 1  # the usage it spent is kept
    assert report.outcomes["q1"].status == "completed"


async def test_dependency_failure_propagates(make_orchestrator: OrchestratorFactory) -> None:
    class Crasher:
        async def run(self, ctx: AgentContext) -> None:
            raise RuntimeError("boom")

    orch = make_orchestrator({"x": Crasher, "qa": QuestionAnswerAgent})
    report = await orch.run([TaskSpec(id="x1", agent="x"),
                             TaskSpec(id="q1", agent="qa", depends_on=("x1",))])
    assert report.outcomes["q1"].status == "failed"
    assert "dependency x1 failed" in report.outcomes["q1"].reason


async def test_unknown_agent_is_a_config_error(make_orchestrator: OrchestratorFactory) -> None:
    orch = make_orchestrator(AGENTS)
    with pytest.raises(ConfigError, match="available: coder, qa"):
        await orch.run([TaskSpec(id="z", agent="nope")])


async def test_abort_requeues_and_keeps_attempt_count(
    make_orchestrator: OrchestratorFactory,
) -> None:
    attempts: list[int] = []
    running = anyio.Event()  # set once the first attempt is under way

    class Slow:
        async def run(self, ctx: AgentContext) -> int:
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                running.set()
                await anyio.sleep(10)
            return ctx.attempt

    orch = make_orchestrator({"s": Slow})

    async def abort_soon() -> None:
        await running.wait()
        assert orch.abort("s1", "test abort")

    async with anyio.create_task_group() as tg:
        tg.start_soon(abort_soon)
        report = await orch.run([TaskSpec(id="s1", agent="s")])
    assert attempts == [1, 2]
    assert report.outcomes["s1"].status == "completed"
    assert report.outcomes["s1"].attempts == 2


async def _run_deciding(
    orch: Orchestrator, spec: TaskSpec, decide: Callable[[], Awaitable[Any]],
) -> RunReport:
    """Run ``spec``; when it pauses, call ``decide`` (R3.4); the run's report."""
    paused = anyio.Event()
    orch.bus.subscribe(lambda e: paused.set() if e.name == "task_paused" else None)
    reports: list[RunReport] = []

    async def run() -> None:
        reports.append(await orch.run([spec]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(30):
            await paused.wait()
        await decide()
    return reports[0]


@pytest.mark.real_asyncio  # the agent's shell commands run as real processes
async def test_r1_1_file_edit_and_shell_budgets(make_orchestrator: OrchestratorFactory) -> None:
    """R1.1: file edits and (dangerous) shell commands are counted; R3.4: at the file-edit
    limit the task pauses for a decision instead of failing — adding edits lets it go on."""
    seen: dict[str, Any] = {}

    class Ops:
        async def run(self, ctx: AgentContext) -> None:
            await ctx.files.write("a.txt", "1")
            safe = await ctx.shell.run("ls")
            risky = await ctx.shell.run("rm -f a.txt")
            seen["flags"] = (safe.dangerous, risky.dangerous)
            await ctx.files.write("b.txt", "2")  # over the limit of 1: pauses

    orch = make_orchestrator({"o": Ops})

    async def decide() -> None:
        info = orch.controller.pause_info("o1")
        assert info is not None and info.dimension == "file_edits"
        assert not (orch.workspace / "o1" / "b.txt").exists()
        await orch.decide("o1", "add_budget", file_edits=1)

    report = await _run_deciding(
        orch, TaskSpec(id="o1", agent="o", budget=Limits(file_edits=1)), decide)
    outcome = report.outcomes["o1"]
    assert outcome.status == "completed", outcome.reason
    u = outcome.usage
    assert (u.file_edits, u.shell_commands, u.dangerous_commands) == (2, 2, 1)
    assert seen == {"flags": (False, True)}
    assert (orch.workspace / "o1" / "b.txt").read_text() == "2"


@pytest.mark.real_asyncio  # the agent's shell commands run as real processes
async def test_r3_4_dangerous_command_limit_pauses_and_finish_ends_the_task(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.1/R3.4: past the dangerous-command limit the task pauses; ``finish`` ends it saved
    (status finished) and the command never runs."""

    class Risky:
        async def run(self, ctx: AgentContext) -> None:
            await ctx.shell.run("touch one")
            await ctx.shell.run("touch two")  # the 2nd dangerous command: over the limit

    orch = make_orchestrator({"r": Risky})
    report = await _run_deciding(
        orch, TaskSpec(id="r1", agent="r", budget=Limits(dangerous_commands=1)),
        lambda: orch.decide("r1", "finish"))
    assert report.outcomes["r1"].status == "finished"
    assert (orch.workspace / "r1" / "one").exists()
    assert not (orch.workspace / "r1" / "two").exists()
    assert report.outcomes["r1"].usage.dangerous_commands == 1


@pytest.mark.parametrize(
    ("command", "dangerous"),
    [("ls -la", False), ("git status", False), ("cat a | grep x", False),
     ("rm -rf build", True), ("echo hi > f", True), ("git commit -m x", True),
     ("curl x | sh", True), ("pip install foo", True), ("find . -delete", True)],
)
def test_r1_1_dangerous_commands_recognised(command: str, dangerous: bool) -> None:
    """R1.1: commands with side effects are dangerous."""
    assert is_dangerous(command) is dangerous


async def test_r1_3_per_call_time_limit_stops_a_stuck_call(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.3: a single call longer than 5 minutes is stopped (virtual clock)."""

    orch = make_orchestrator(AGENTS, provider=ScriptedProvider(latency_s=301))
    spec = TaskSpec(id="q", agent="qa", prompt="What?", budget=Limits(time_s=3600))
    report = await orch.run([spec])
    reason = report.outcomes["q"].reason
    assert "per-call limit of 300 s" in reason
    assert ProviderTimeoutError.__name__  # the error type raised through the agent


async def test_gateway_falls_back_when_model_overloaded(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R6.1 (basic): an overloaded model's call is retried on the task type's fallback."""
    provider = ScriptedProvider(down={"haiku"})
    orch = make_orchestrator(AGENTS, provider=provider)
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What is this?")])
    assert report.outcomes["q"].status == "completed"
    assert [c.model for c in provider.calls] == ["haiku", "sonnet"]
    assert report.outcomes["q"].usage.tokens_by_model == {"sonnet": 150}
