"""The governed tool loop on virtual time: turns, tool errors, pauses between turns,
and the simulated provider's offline tool loops (R1.1, R3.4, R3.6)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.builtin import CoderAgent
from agents.providers import SimulatedProvider
from scheduler import Completion, CompletionRequest, Usage
from scheduler.config import SimulatedProviderConfig
from scheduler.runtime import AgentContext, Tool, ToolError
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio


class ToolScript:
    """Answers from a list of content-block lists; records what each request carried."""

    def __init__(self, turns: list[list[dict[str, Any]]]) -> None:
        self.turns = turns
        self.requests: list[CompletionRequest] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        await anyio.sleep(0.1)
        blocks = self.turns[len(self.requests) - 1]
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        return Completion.from_blocks(blocks, Usage(100, 20), request.model, stop_reason=stop)

    async def aclose(self) -> None:
        return None


def _use(n: int, name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{n}", "name": name, "input": args}


async def test_tool_errors_and_unknown_tools_go_back_to_the_model(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """A tool's ToolError and an unknown tool become is_error results; the loop goes on."""
    ran: list[Mapping[str, Any]] = []

    async def flaky(args: Mapping[str, Any]) -> str:
        ran.append(args)
        raise ToolError("disk is read-only")

    class Agent:
        async def run(self, ctx: AgentContext) -> str:
            tool = Tool("flaky", "fails", {"type": "object"}, flaky)
            result = await ctx.run_tools([{"role": "user", "content": "go"}], [tool])
            return result.text

    # the answer after a turn whose tool results all failed scores 0.3 with the default
    # "signals" scorer (R4.3), so it is asked again one tier up: a third answer
    provider = ToolScript([[_use(1, "flaky", x=1), _use(2, "nope")],
                           [{"type": "text", "text": "gave up"}],
                           [{"type": "text", "text": "gave up"}]])
    orch = make_orchestrator({"a": Agent}, provider=provider,
                             tasks=[{"id": "t", "agent": "a", "prompt": "x"}])
    report = await orch.run()
    assert report.outcomes["t"].status == "completed"
    assert orch.handles["t"].result == "gave up" and ran == [{"x": 1}]
    results = provider.requests[1].messages[-1]["content"]
    assert [r["is_error"] for r in results] == [True, True]
    assert "disk is read-only" in results[0]["content"] and "nope" in results[1]["content"]
    assert provider.requests[0].tools[0]["name"] == "flaky"
    assert len(provider.requests) == 3  # the R4.3 retry sends the same turn one tier up
    assert provider.requests[2].messages == provider.requests[1].messages
    assert provider.requests[2].model != provider.requests[1].model


async def test_r3_4_pause_takes_effect_between_turns_and_the_loop_continues(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R3.4/R3.6: a pause requested during a tool call waits for a decision before the
    next model turn; after it the loop continues without running the tool again."""
    calls: list[float] = []

    class Agent:
        async def run(self, ctx: AgentContext) -> Any:
            async def work(args: Mapping[str, Any]) -> str:
                calls.append(anyio.current_time())
                await orch.controller.request_pause("t", "operator pause")
                return "done"

            tool = Tool("work", "does work", {"type": "object"}, work)
            return (await ctx.run_tools([{"role": "user", "content": "go"}], [tool])).turns

    provider = ToolScript([[_use(1, "work")], [{"type": "text", "text": "finished"}]])
    orch = make_orchestrator({"a": Agent}, provider=provider,
                             tasks=[{"id": "t", "agent": "a", "prompt": "x"}])
    decided_at: list[float] = []

    async def decide_later() -> None:
        await anyio.sleep(60)  # virtual time: a person takes a minute
        assert orch.controller.is_paused("t")
        assert len(provider.requests) == 1  # the second turn waits for the decision
        decided_at.append(anyio.current_time())
        await orch.decide("t", "add_budget", tokens=10_000)

    async with anyio.create_task_group() as tg:
        tg.start_soon(decide_later)
        report = await orch.run()
    assert report.outcomes["t"].status == "completed", report.outcomes["t"].reason
    assert orch.handles["t"].result == 2 and len(calls) == 1
    assert len(provider.requests) == 2 and decided_at


# the tool calls write real files in worker threads; on a virtual clock time would jump
# past the task's time budget meanwhile
@pytest.mark.real_asyncio
async def test_coder_runs_an_offline_tool_loop_on_the_simulated_provider(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """``make demo``'s coder: the simulated provider asks for list_files, then writes a
    step file; each tool call is governed and counted (R1.1)."""
    provider = SimulatedProvider(SimulatedProviderConfig(failure_rate={}, time_scale=0.01))
    orch = make_orchestrator({"coder": CoderAgent}, provider=provider, tasks=[
        {"id": "c", "agent": "coder", "prompt": "tidy up", "params": {"steps": 3}}])
    report = await orch.run()
    out = report.outcomes["c"]
    assert out.status == "completed", out.reason
    result = orch.handles["c"].result
    assert result["files_changed"] == ["step_1.py", "step_2.py"]
    assert (result["turns"], result["tool_calls"]) == (4, 3)
    assert (out.usage.calls, out.usage.file_edits) == (4, 2)
    assert (tmp_path / "workspace" / "c" / "step_2.py").exists()
