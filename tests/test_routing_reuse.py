"""What routing keeps between a task's calls notices every change that matters (R4.1,
R4.2, R4.3, R6.1, R6.7): routing's view of a task (``Router.info``), route decisions
(reused for the calls alike in all they depend on) and the replanner's usual answer
(``proceeds``, given without building the policy's whole input)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from policies.complexity import Assessment, ScoredComplexity, TaskInfo
from policies.replan import DefaultReplanPolicy, ReplanDecision, ReplanInput
from policies.routing import CheapestCapableRouting, RouteDecision, RoutingInput
from scheduler import Completion, CompletionRequest, TaskSpec, Usage, VibeConfig
from scheduler.budget import resolve_task
from scheduler.core import EventBus
from scheduler.routing import HealthMonitor, ModelCatalog, Replanner, Router
from scheduler.runtime import Orchestrator
from scheduler.tasks import TaskHandle
from scheduler.testing import build_orchestrator, run_virtual
from tests._routing_helpers import COMPLEX, SIMPLE, ManualClock, info, knock_out, make_router

MESSAGES = [{"role": "user", "content": "go on"}]


class Provider:
    """Answers every call at once, remembering the model of each."""

    def __init__(self) -> None:
        self.models: list[str] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        if request.task_id != "health-check":
            self.models.append(request.model)
        return Completion("ok", Usage(10, 5), request.model)

    async def aclose(self) -> None:
        return None


class Stepper:
    """Before each of its calls, runs the next step (a change between two calls)."""

    def __init__(self, steps: list[Callable[[], None]]) -> None:
        self.steps = steps

    async def run(self, ctx: Any) -> None:
        for step in self.steps:
            step()
            await ctx.llm.complete(MESSAGES, max_tokens=10)


def run_calls(tmp_path: Path, prompt: str,
              steps: Callable[[Orchestrator], list[Callable[[], None]]],
              **cfg: Any) -> list[str]:
    """The models of one task's calls, ``steps(orch)`` run before each."""
    provider = Provider()
    made: list[Orchestrator] = []
    orch = build_orchestrator({"s": lambda: Stepper(steps(made[0]))}, state_dir=tmp_path,
                              provider=provider, **cfg)
    made.append(orch)

    async def main() -> None:
        report = await orch.run([TaskSpec(id="t", agent="s", prompt=prompt)])
        assert report.outcomes["t"].status == "completed", report.outcomes["t"].reason

    run_virtual(main)
    return provider.models


def test_r4_2_a_tasks_later_call_goes_down_a_tier_once_its_budget_passes_70_pct(
    tmp_path: Path,
) -> None:
    """R4.2: the same task's next call is routed one tier down when the budget used
    passed 70 % since its last call (the reused decision notices the budget)."""
    used = [0.0]

    def steps(orch: Orchestrator) -> list[Callable[[], None]]:
        orch.tracker.fraction_used = lambda task_id, scopes=None: used[0]  # type: ignore[method-assign]
        return [lambda: used.__setitem__(0, 0.5), lambda: used.__setitem__(0, 0.75),
                lambda: used.__setitem__(0, 0.4)]

    models = run_calls(tmp_path, "Fix the crash in the parser", steps)
    assert models == ["sonnet", "haiku", "sonnet"]


def test_r6_1_a_tasks_later_call_is_routed_around_a_model_that_went_down(
    tmp_path: Path,
) -> None:
    """R6.1/R6.6: a model that becomes unavailable between two calls of one task is not
    chosen again for its next call (the reused decision notices model health)."""

    def steps(orch: Orchestrator) -> list[Callable[[], None]]:
        return [lambda: None, lambda: knock_out(orch.gateway.health, "sonnet")]

    models = run_calls(tmp_path, "Fix the crash in the parser", steps)
    assert models[0] == "sonnet" and models[1] != "sonnet"


class Unlearning(ScoredComplexity):
    """Scores like the default but learns nothing: a correction moves only the task."""

    def learn(self, task: TaskInfo, upgraded_to: str) -> None:
        return None


def test_r4_3_a_corrected_task_is_routed_up_on_its_next_call() -> None:
    """R4.3: a correction's tier (the task's ``min_tier``) applies to the task's next
    call even when its assessment is unchanged."""
    config = VibeConfig()
    clock = ManualClock()
    bus = EventBus(clock)
    catalog = ModelCatalog(config)
    router = Router(config, bus=bus, catalog=catalog, complexity=Unlearning(), clock=clock,
                    health=HealthMonitor(config, bus, catalog=catalog, clock=clock))
    task = info("a", "bug_fix", prompt="fix the typo", **SIMPLE)
    assert router.choose(task, 0.0).model == "haiku"
    before = router.complexity.assess(task)
    for _ in range(config.routing.haiku_failures_before_upgrade):
        router.report_outcome(task, "haiku", success=False)
    assert router.complexity.assess(task) is before  # only the task moved
    assert router.choose(task, 0.0).model == "sonnet"


class OneAssessment(ScoredComplexity):
    """Gives every task the same assessment object (a policy may share one)."""

    def assess(self, task: TaskInfo) -> Assessment:
        return super().assess(info("any", "bug_fix", prompt="fix the crash"))


def test_r6_1_a_decision_is_shared_only_by_tasks_of_one_type() -> None:
    """R6.1: tasks of another type get their own decision (their fallback), even when
    their assessment is the very same object."""
    config = VibeConfig()
    clock = ManualClock()
    bus = EventBus(clock)
    catalog = ModelCatalog(config)
    router = Router(config, bus=bus, catalog=catalog, complexity=OneAssessment(), clock=clock,
                    health=HealthMonitor(config, bus, catalog=catalog, clock=clock))
    bug = router.choose(info("a", "bug_fix", prompt="fix the crash"), 0.0)
    edit = router.choose(info("b", "code_modification", prompt="fix the crash"), 0.0)
    assert (bug.model, bug.fallback) == ("sonnet", "opus")
    assert (edit.model, edit.fallback) == ("sonnet", "haiku")


def test_r4_3_what_a_similar_task_taught_applies_to_a_tasks_next_call() -> None:
    """R4.3: a similar task's correction raises this task's score; its next call goes to
    the raised tier (the reused decision notices the assessment)."""
    router, _ = make_router()
    task = info("a", "bug_fix", prompt="fix the bug in the parser", **SIMPLE)
    other = info("b", "bug_fix", prompt="fix the bug in the lexer", **SIMPLE)
    assert router.choose(task, 0.0).model == "haiku"
    router.report_outcome(other, "haiku", success=True, quality=0.1)  # upgraded: learns
    assert router.choose(task, 0.0).model == "sonnet"


def test_r6_7_a_tier_whose_budget_ran_out_is_left_for_the_tasks_next_call() -> None:
    """R6.7: the tiers over their per-model budget are part of what a decision is reused
    for."""
    router, _ = make_router()
    task = info("a", "architecture_design", prompt="design the architecture", **COMPLEX)
    assert router.choose(task, 0.0).model == "opus"
    assert router.choose(task, 0.0, over_budget=frozenset({"opus"})).model == "sonnet"
    assert router.choose(task, 0.0).model == "opus"
    knock_out(router.health, "opus")
    knock_out(router.health, "sonnet")
    assert "opus unavailable" in router.choose(task, 0.0).reason
    # every usable tier over budget too: the reason alone tells the difference
    over = router.choose(task, 0.0, over_budget=frozenset({"opus", "haiku"}))
    assert "opus budget cannot cover it" in over.reason


def test_r4_2_a_tasks_changed_view_and_budget_percent_change_its_decision() -> None:
    """R4.2: the capability floor of the task's view, and the budget's whole percent shown
    in the reason, are part of what a decision is reused for."""
    router, _ = make_router()
    task = info("a", "question_answering", prompt="what is this", **SIMPLE)
    first = router.choose(task, 0.50)
    assert first.model == "haiku" and "budget: 50%" in first.reason
    assert router.choose(task, 0.501) is first  # the same whole percent: reused
    assert "budget: 51%" in router.choose(task, 0.51).reason
    high = info("a", "question_answering", prompt="what is this", high=True, **SIMPLE)
    assert router.choose(high, 0.51).model == "sonnet"
    assert router.statistics().decisions == 4  # reused decisions are counted too


class EveryTimeRouting(CheapestCapableRouting):
    """Overrides ``select`` alone: its decisions may depend on anything."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked = 0

    def select(self, data: RoutingInput) -> RouteDecision:
        self.asked += 1
        return super().select(data)


class EveryTimeReplan(DefaultReplanPolicy):
    """Overrides ``plan`` alone: the default's quick answer is not its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked = 0

    def plan(self, data: ReplanInput) -> ReplanDecision:
        self.asked += 1
        return super().plan(data)


def test_r7_4_a_policy_overriding_its_decision_alone_is_asked_every_call(
    tmp_path: Path,
) -> None:
    """R7.4: a routing or replan policy subclass that overrides ``select`` / ``plan`` but
    not the default's shortcut (``budget_key`` / ``proceeds``) is asked before every call."""

    made: list[Orchestrator] = []

    def steps(orch: Orchestrator) -> list[Callable[[], None]]:
        made.append(orch)
        return [lambda: None] * 3

    models = run_calls(tmp_path, "Fix the crash", steps,
                       policies={"routing": f"{__name__}:EveryTimeRouting",
                                 "replan": f"{__name__}:EveryTimeReplan"})
    assert len(models) == 3
    routing, replan = made[0].gateway.router.policy, made[0].gateway.replanner.policy
    assert isinstance(routing, EveryTimeRouting) and isinstance(replan, EveryTimeReplan)
    assert routing.asked == 3
    assert replan.asked == 1 + 3  # the attempt's start, then each call


def test_r4_1_routings_view_of_a_task_follows_its_spec_and_profile() -> None:
    """R4.1: ``Router.info`` is made once per task, and again when the handle holds
    another spec or profile."""
    config = VibeConfig()
    router, _ = make_router(config)
    spec = TaskSpec(id="x", agent="coder", prompt="Fix the crash")
    handle = TaskHandle(spec, resolve_task(spec, config))
    first = router.info(handle)
    assert router.info(handle) is first
    handle.spec = spec.model_copy(update={"prompt": "Design the architecture"})
    assert router.info(handle).prompt == "Design the architecture"
    other = TaskSpec(id="x", agent="coder", prompt="Design the architecture",
                     complexity="complex")
    handle.profile = resolve_task(other, config)
    assert router.info(handle).complexity == "complex"
    router.forget("x")
    assert router.info(handle) is not router.info(TaskHandle(spec, resolve_task(spec, config)))


@pytest.mark.parametrize("fraction", [0.95, 0.5])
def test_r6_7_the_replanners_quick_answer_matches_its_policy(fraction: float) -> None:
    """R6.7: ``Replanner.proceeds`` says True only where the default policy proceeds."""
    config = VibeConfig()
    router, _ = make_router(config)
    replanner = Replanner(config, router, bus=router.bus)
    task = info("a", "architecture_design", prompt="design the architecture", **COMPLEX)
    assessment: Assessment = router.assess(task)
    assert replanner.proceeds(fraction, task) is (fraction < 0.9)
    knock_out(router.health, assessment.tier)
    assert replanner.proceeds(fraction, task) is False
