"""R6.2 on the runtime path: a part's limited scope is enforced in the gateway, and a
model that degrades mid-task makes the orchestrator break the task down then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Completion, CompletionRequest, TaskSpec, Usage
from scheduler.runtime import AgentContext
from scheduler.testing import build_orchestrator
from tests._routing_helpers import knock_out

pytestmark = pytest.mark.anyio

DESIGN = "Design the storage architecture and weigh the trade-offs"


class Recording:
    """1 s per call; records (task, model, max_tokens)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        await anyio.sleep(1.0)
        self.calls.append((request.task_id, request.model, request.max_tokens))
        return Completion("done", Usage(1_000, 500), request.model, quality=0.9)

    async def aclose(self) -> None:
        return None


class Greedy:
    """Asks for long answers: ``params.calls`` routed calls of 8,000 output tokens, 10 s
    apart."""

    async def run(self, ctx: AgentContext) -> dict[str, Any]:
        for i in range(int(ctx.task.params.get("calls", 1))):
            if i:
                await anyio.sleep(10)
            await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}],
                                   max_tokens=8_000)
        return {"task": ctx.task.id}


async def test_r6_2_a_parts_max_output_tokens_is_enforced_in_the_gateway(
    tmp_path: Path,
) -> None:
    """R6.2 "limit the scope": a broken-down part's calls get at most its
    ``max_output_tokens`` (4,000 by default), whatever the agent asks for."""
    provider = Recording()
    orch = build_orchestrator({"g": Greedy}, state_dir=tmp_path, provider=provider)
    knock_out(orch.gateway.health, "opus")
    knock_out(orch.gateway.health, "sonnet")
    spec = TaskSpec(id="t1", agent="g", prompt=DESIGN, priority="user_waiting",
                    params={"parts": ["store.py", "api.py"]})
    report = await orch.run([spec])
    assert report.outcomes["t1"].status == "completed"
    parts = {t: m for t, _, m in provider.calls if ".part" in t}
    assert parts and set(parts.values()) == {4_000}
    assert max(m for t, _, m in provider.calls if t == "t1.verify") <= 8_000


async def test_r6_2_a_model_degrading_mid_task_breaks_the_task_down(tmp_path: Path) -> None:
    """R6.2: break-down is considered again when the model degrades mid-task: the task's
    first call runs on its model; opus and sonnet then go down, and its next routed call
    splits the task into parts on haiku instead of running on haiku as a whole."""
    provider = Recording()
    orch = build_orchestrator({"g": Greedy}, state_dir=tmp_path, provider=provider)
    spec = TaskSpec(id="t1", agent="g", prompt=DESIGN, priority="user_waiting",
                    params={"parts": ["store.py", "api.py"], "calls": 2})

    async def degrade() -> None:
        await anyio.sleep(5)  # after t1's first call, before its second
        knock_out(orch.gateway.health, "opus")
        knock_out(orch.gateway.health, "sonnet")

    async with anyio.create_task_group() as tg:
        tg.start_soon(degrade)
        report = await orch.run([spec])
    assert [m for t, m, _ in provider.calls if t == "t1"] == ["opus"]  # one call, then split
    status = {k: o.status for k, o in report.outcomes.items()}
    assert status == {"t1": "completed", "t1.part1": "completed", "t1.part2": "completed",
                      "t1.verify": "completed"}
    assert {m for t, m, _ in provider.calls if t != "t1"} == {"haiku"}
    split = [e for e in orch.bus.history if e.name == "task_broken_down"]
    assert len(split) == 1 and split[0].at >= 5
