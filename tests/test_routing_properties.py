"""Invariants of the pure routing policies under random inputs (R4.1, R4.2, R6.7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.complexity import DEPTHS, LEVELS, ScoredComplexity, TaskInfo
from policies.replan import BreakDown, DefaultReplanPolicy, Defer, Proceed, ReplanInput, Simplify
from policies.routing import CheapestCapableRouting, RoutingInput
from scheduler import VibeConfig
from scheduler.config import TASK_TYPES
from scheduler.routing import ModelCatalog

TIERS = ("haiku", "sonnet", "opus")
CATALOG = ModelCatalog(VibeConfig())

tasks = st.builds(
    TaskInfo,
    task_id=st.just("t"),
    task_type=st.sampled_from(TASK_TYPES),
    complexity=st.sampled_from(LEVELS),
    prompt=st.sampled_from(["", "format it", "fix the bug", "design the architecture",
                            "security review", "write tests", "investigate then fix"]),
    expected_output_tokens=st.none() | st.integers(0, 60_000),
    reasoning_depth=st.none() | st.sampled_from(DEPTHS),
    requires_high_capability=st.booleans(),
    priority=st.integers(1, 3),
)
usable_sets = st.sets(st.sampled_from(TIERS), min_size=1).map(frozenset)
fractions = st.floats(0.0, 1.5, allow_nan=False)


def _input(task: TaskInfo, usable: frozenset[str], fraction: float) -> RoutingInput:
    return RoutingInput(
        task=task, assessment=ScoredComplexity().assess(task), budget_fraction=fraction,
        tiers=TIERS, usable=usable,
        substitutes={t: CATALOG.substitutes(t, task.task_type) for t in TIERS},
    )


@given(tasks)
def test_r4_1_score_and_tier_agree(task: TaskInfo) -> None:
    """R4.1: the tier is always the band of the score."""
    a = ScoredComplexity().assess(task)
    band = "haiku" if a.score <= 3 else "sonnet" if a.score <= 6 else "opus"
    assert a.tier == band and 0 <= a.score <= 12


@given(tasks, usable_sets, fractions)
def test_r4_2_decision_is_usable_and_never_above_need(
    task: TaskInfo, usable: frozenset[str], fraction: float
) -> None:
    """R4.2: the model is usable; budget pressure never raises the tier; the floor holds
    whenever a usable tier can meet it; the reason names complexity and budget."""
    d = CheapestCapableRouting().select(_input(task, usable, fraction))
    assert d.model in usable
    assert d.reason.startswith("complexity: ") and ", budget: " in d.reason
    if task.requires_high_capability and usable & {"sonnet", "opus"}:
        assert d.model in ("sonnet", "opus")
    if not task.requires_high_capability and d.model in usable and not d.substituted:
        assert TIERS.index(d.model) <= TIERS.index(d.wanted)
    assert d.fallback is None or (d.fallback in usable and d.fallback != d.model)


@given(tasks, usable_sets, fractions, st.booleans(), st.floats(0, 1000))
def test_r6_7_replan_decisions_are_consistent(
    task: TaskInfo, usable: frozenset[str], fraction: float, hook: bool, waited: float
) -> None:
    """R6.7: simplify only when critical, defer only for an unusable opus, break down only
    when haiku alone is left, proceed on a usable model."""
    wanted = ScoredComplexity().assess(task).tier
    d = DefaultReplanPolicy().plan(ReplanInput(
        task=task, wanted=wanted, tiers=TIERS, usable=usable, budget_fraction=fraction,
        has_decompose=hook, deferred_s=waited,
    ))
    if isinstance(d, Simplify):
        assert fraction >= 0.9
    elif isinstance(d, Defer):
        assert wanted == "opus" and "opus" not in usable and waited < 600
    elif isinstance(d, BreakDown):
        assert usable == {"haiku"} and wanted != "haiku" and d.add_verification
        assert d.use_agent_hook == hook
    else:
        assert isinstance(d, Proceed) and d.model in usable
