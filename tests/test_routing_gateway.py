"""The gateway routes every call through the Router and feeds model health (R4.2, R4.3, R6.3)."""

from __future__ import annotations

import pytest

from agents.builtin import QuestionAnswerAgent
from scheduler import Completion, CompletionRequest, TaskSpec, Usage
from scheduler.core import OverloadedError
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio


class QualityProvider:
    """Answers with a fixed quality per model; models in ``down`` raise 529."""

    def __init__(self, quality: dict[str, float], down: set[str] | None = None) -> None:
        self.quality = quality
        self.down = down or set()
        self.calls: list[str] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls.append(request.model)
        if request.model in self.down:
            raise OverloadedError(request.model, "overloaded_error", status=529)
        return Completion("ok", Usage(100, 50), request.model,
                          quality=self.quality.get(request.model))

    async def aclose(self) -> None:
        return None


AGENTS = {"qa": QuestionAnswerAgent}


async def test_r4_3_gateway_retries_low_quality_on_next_tier(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R4.3: a haiku answer judged 0.3 is retried on sonnet within the same call."""
    provider = QualityProvider({"haiku": 0.3, "sonnet": 0.8})
    orch = make_orchestrator(AGENTS, provider=provider)
    events: list[str] = []
    orch.bus.subscribe(lambda e: events.append(e.name))
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What is this?")])
    assert report.outcomes["q"].status == "completed"
    assert provider.calls == ["haiku", "sonnet"]
    assert events.count("routing_upgrade") == 1
    assert set(report.outcomes["q"].usage.tokens_by_model) == {"haiku", "sonnet"}
    stats = orch.gateway.health.statistics().models
    assert stats["haiku"].calls == 1 and stats["haiku"].satisfaction == pytest.approx(0.3)


async def test_r4_2_gateway_routes_by_complexity(make_orchestrator: OrchestratorFactory) -> None:
    """R4.2: a question goes to haiku, an architecture task to opus, with the router's reason."""
    provider = QualityProvider({})
    orch = make_orchestrator(AGENTS, provider=provider)
    await orch.run([
        TaskSpec(id="q", agent="qa", prompt="What is this?"),
        TaskSpec(id="a", agent="qa", prompt="Design the architecture and its trade-offs"),
    ])
    assert sorted(provider.calls) == ["haiku", "opus"]
    assert orch.gateway.router.statistics().by_model == {"haiku": 1, "opus": 1}


async def test_r6_6_gateway_feeds_health_and_routes_around(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R6.3/R6.6: 529s recorded per call; after 3 haiku is routed around without calling it."""
    provider = QualityProvider({}, down={"haiku"})
    orch = make_orchestrator(AGENTS, provider=provider)
    specs = [TaskSpec(id=f"q{i}", agent="qa", prompt="What is this?",
                      depends_on=(f"q{i - 1}",) if i else ()) for i in range(5)]
    report = await orch.run(specs)
    assert all(o.status == "completed" for o in report.outcomes.values())
    assert provider.calls.count("haiku") == 3  # then marked unavailable
    assert provider.calls.count("sonnet") == 5
    health = orch.gateway.health
    assert health.state("haiku") == "unavailable"
    assert health.statistics().models["haiku"].errors == 3


async def test_r6_7_model_whose_budget_cannot_cover_the_call_is_routed_around(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R6.7/R1.3: opus's per-model session budget is too small → the call goes to sonnet."""
    provider = QualityProvider({})
    orch = make_orchestrator(AGENTS, provider=provider,
                             budgets={"session": {"tokens_by_model": {"opus": 500}}})
    events: list[str] = []
    orch.bus.subscribe(lambda e: events.append(e.name))
    report = await orch.run(
        [TaskSpec(id="a", agent="qa", prompt="Design the architecture and its trade-offs")])
    assert report.outcomes["a"].status == "completed", report.outcomes["a"].reason
    assert provider.calls == ["sonnet"]
    task = orch.handles["a"]
    decision = orch.gateway.route(task, None, None, need_tokens=10_000)
    assert decision.model == "sonnet" and "opus budget cannot cover it" in decision.reason


async def test_r6_1_fallback_chain_reaches_the_last_usable_tier(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R6.1: when the first fallback fails too, the next usable substitute is tried."""
    provider = QualityProvider({}, down={"haiku", "sonnet"})
    orch = make_orchestrator(AGENTS, provider=provider)
    events: list[str] = []
    orch.bus.subscribe(lambda e: events.append(e.name))
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What is this?")])
    assert report.outcomes["q"].status == "completed", report.outcomes["q"].reason
    assert provider.calls == ["haiku", "sonnet", "opus"]
    assert events.count("model_fallback") == 2


async def test_r4_3_failed_correction_keeps_the_first_answer(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R4.3: if the upgrade's retry hits a 529, the call returns the answer it already has."""
    provider = QualityProvider({"haiku": 0.2}, down={"sonnet"})
    orch = make_orchestrator(AGENTS, provider=provider)
    events: list[str] = []
    orch.bus.subscribe(lambda e: events.append(e.name))
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What is this?")])
    assert report.outcomes["q"].status == "completed", report.outcomes["q"].reason
    assert provider.calls == ["haiku", "sonnet"]
    assert events.count("routing_upgrade") == 1 and events.count("routing_upgrade_failed") == 1
