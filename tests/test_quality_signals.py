"""R4.3 with a provider that never scores (like the Anthropic API): the default signal
needs no second model call, an agent can give its own verdict, and what the router
learns survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import Completion, CompletionRequest, TaskSpec, Usage, VibeConfig
from scheduler.runtime import AgentContext
from scheduler.testing import ScriptedProvider, build_orchestrator
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio

PROMPT = "Update the docstring of the loader"


class Unscored(ScriptedProvider):
    """Never scores; models in ``refuses`` refuse."""

    def __init__(self, refuses: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.refuses = refuses

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls.append(request)
        if request.model in self.refuses:
            return Completion("", Usage(50, 1), request.model, stop_reason="refusal")
        return Completion("Done: docstring updated.", Usage(50, 20), request.model)


class OneCall:
    async def run(self, ctx: AgentContext) -> str:
        reply = await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}])
        return reply.model


class SelfChecking:
    """Calls, checks the answer itself (its 'tests fail'), reports it, calls again."""

    upgraded: list[str | None] = []

    async def run(self, ctx: AgentContext) -> str:
        await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}])
        self.upgraded.append(ctx.report_quality(0.2, reason="tests failed"))
        reply = await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}])
        return reply.model


def _spec(task_id: str = "t1", agent: str = "one") -> TaskSpec:
    return TaskSpec(id=task_id, agent=agent, prompt=PROMPT, task_type="code_modification")


async def test_r4_3_a_refusal_upgrades_by_default_without_a_judge_call(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R4.3 by default, with an unscored provider: a refusal on haiku is low quality, so
    the call is retried on sonnet; no second model call is made to judge it."""
    provider = Unscored(refuses=frozenset({"haiku"}))
    orch = make_orchestrator({"one": OneCall}, provider=provider)
    report = await orch.run([_spec()])
    assert [r.model for r in provider.calls] == ["haiku", "sonnet"]
    assert orch.handles["t1"].result == "sonnet"
    assert report.outcomes["t1"].status == "completed"
    upgrades = [e for e in orch.bus.history if e.name == "routing_upgrade"]
    assert [e.message for e in upgrades] == [
        "upgrading from haiku to sonnet due to quality issues"]


async def test_r4_3_failed_tool_results_are_a_low_quality_signal() -> None:
    from scheduler.runtime._quality import SignalScorer

    scorer = SignalScorer()
    ok = Completion("fine", Usage(1, 1), "haiku")
    failed = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "a", "content": "boom", "is_error": True}]}
    mixed = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "a", "content": "boom", "is_error": True},
        {"type": "tool_result", "tool_use_id": "b", "content": "ok"}]}
    task = None  # the signals need nothing of the task
    assert await scorer.score(task, [failed], ok) == 0.3  # type: ignore[arg-type]
    assert await scorer.score(task, [mixed], ok) is None  # type: ignore[arg-type]
    assert await scorer.score(task, [{"role": "user", "content": "x"}], ok) is None  # type: ignore[arg-type]


async def test_r4_3_an_agents_own_verdict_upgrades_its_next_call(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R4.3: ``ctx.report_quality`` below 0.5 moves the task's next routed call up a tier."""
    SelfChecking.upgraded.clear()
    provider = Unscored()
    orch = make_orchestrator({"self": SelfChecking}, provider=provider)
    await orch.run([_spec(agent="self")])
    assert SelfChecking.upgraded == ["sonnet"]
    assert [r.model for r in provider.calls] == ["haiku", "sonnet"]


@pytest.mark.real_asyncio  # SQLite runs in worker threads
async def test_r4_3_what_the_router_learned_survives_a_restart(tmp_path: Path) -> None:
    """R4.3 "raises the complexity score of similar future tasks", across runs: after an
    upgrade in one run, a similar task of the next run on the same store starts on the
    upgraded tier."""
    config = VibeConfig(state_dir=tmp_path, store="sqlite", session_id="s1")
    first = Unscored(refuses=frozenset({"haiku"}))
    orch = build_orchestrator({"one": OneCall}, config=config, provider=first)
    # three corrections of one task class, one after the other (each upgraded answer
    # that then succeeds takes back a third of a correction)
    specs = [_spec("a1"), _spec("a2").model_copy(update={"depends_on": ("a1",)}),
             _spec("a3").model_copy(update={"depends_on": ("a2",)})]
    await orch.run(specs)
    assert [r.model for r in first.calls] == ["haiku", "sonnet"] * 3
    learned = orch.gateway.router.complexity.export()  # type: ignore[attr-defined]
    assert learned

    config2 = config.model_copy(update={"session_id": "s2"})
    second = Unscored()
    orch2 = build_orchestrator({"one": OneCall}, config=config2, provider=second)
    await orch2.run([_spec("b1")])
    assert [r.model for r in second.calls] == ["sonnet"]  # no haiku try first
