"""R6.1 for calls that name their model: they fall back only when allowed, and a retried
call holds one reservation at a time."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from scheduler import Completion, CompletionRequest, TaskSpec, Usage
from scheduler.core import ProviderTimeoutError
from scheduler.runtime import AgentContext, Orchestrator
from scheduler.testing import ScriptedProvider
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio


class AsksForOpus:
    async def run(self, ctx: AgentContext) -> str:
        hints: dict[str, Any] = dict(ctx.task.params.get("hints", {}))
        reply = await ctx.llm.complete([{"role": "user", "content": "hi"}], model="opus",
                                       max_tokens=100, hints=hints)
        return reply.model


def _models(provider: ScriptedProvider) -> list[str]:
    return [r.model for r in provider.calls]


async def test_r6_1_an_explicit_model_does_not_fall_back_by_default(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """A call that named opus fails with opus's error instead of running elsewhere."""
    provider = ScriptedProvider(down={"opus"})
    orch = make_orchestrator({"a": AsksForOpus}, provider=provider)
    report = await orch.run([TaskSpec(id="t", agent="a", prompt="Fix the crash")])
    assert _models(provider) == ["opus"]
    assert report.outcomes["t"].status == "failed"
    assert "overloaded" in report.outcomes["t"].reason


@pytest.mark.parametrize("how", ["config", "hint"])
async def test_r6_1_an_explicit_model_falls_back_when_allowed(
    make_orchestrator: OrchestratorFactory, how: str,
) -> None:
    provider = ScriptedProvider(down={"opus"})
    settings: dict[str, Any] = (
        {"routing": {"explicit_model_fallback": True}} if how == "config" else {})
    params = {"hints": {"allow_fallback": True}} if how == "hint" else {}
    orch = make_orchestrator({"a": AsksForOpus}, provider=provider, **settings)
    report = await orch.run([TaskSpec(id="t", agent="a", prompt="Fix the crash",
                                      params=params)])
    assert report.outcomes["t"].status == "completed"
    assert _models(provider)[0] == "opus" and len(_models(provider)) == 2


class HangsOnOpus(ScriptedProvider):
    """opus hangs past the per-call limit; records the task's held reservation at each
    call's start."""

    def __init__(self, orch_ref: list[Orchestrator]) -> None:
        super().__init__()
        self.orch_ref = orch_ref
        self.held: list[int] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls.append(request)
        self.held.append(self.orch_ref[0].tracker.task_scope("t").reserved_tokens)
        if request.model == "opus":
            await anyio.sleep(3600)
            raise ProviderTimeoutError("opus", "unreachable")  # pragma: no cover
        return Completion("ok", Usage(10, 5), request.model)


async def test_r6_1_a_retried_call_released_its_previous_reservation(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """After a timeout the next tier's call holds only its own reservation."""
    ref: list[Orchestrator] = []
    provider = HangsOnOpus(ref)
    orch = make_orchestrator({"a": AsksForOpus}, provider=provider,
                             routing={"explicit_model_fallback": True},
                             budgets={"task": {"call_time_s": 60}})
    ref.append(orch)
    report = await orch.run([TaskSpec(id="t", agent="a", prompt="Fix the crash")])
    assert report.outcomes["t"].status == "completed"
    first, second = provider.held[:2]
    assert second <= first  # not first + second: the timed-out call's hold is gone
    assert orch.tracker.task_scope("t").reserved_tokens == 0
