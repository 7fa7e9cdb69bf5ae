"""Model catalog, complexity assessment, selection and correction (SPEC R4.1–R4.3, R6.1)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog.testing

from policies.complexity import ScoredComplexity
from policies.routing import CheapestCapableRouting, RoutingInput
from scheduler import ConfigError, TaskSpec, VibeConfig
from scheduler.budget import resolve_task
from scheduler.config import load_policies
from scheduler.routing import ModelCatalog, Router, task_info
from scheduler.tasks import TaskHandle
from tests._routing_helpers import COMPLEX, MODERATE, SIMPLE, info, knock_out, make_router

# -- catalog ---------------------------------------------------------------------------


def test_r4_1_catalog_tier_order_ids_prices() -> None:
    """R4.1: haiku < sonnet < opus, with model ids, prices and context windows from config."""
    cat = ModelCatalog(VibeConfig())
    assert cat.tiers == ("haiku", "sonnet", "opus")
    assert [cat.rank(t) for t in cat.tiers] == [0, 1, 2]
    assert cat.up("haiku") == "sonnet" and cat.up("opus") is None
    assert cat.entry("opus").model_id == "claude-opus-4-7"
    assert cat.entry("sonnet").output_usd_per_mtok == 15.0
    assert cat.entry("haiku").context_window == 200_000
    with pytest.raises(ConfigError):
        cat.entry("gpt")


def test_r6_1_task_type_preferred_and_fallback() -> None:
    """R6.1: architecture prefers opus with fallback sonnet; substitutes follow it first."""
    cat = ModelCatalog(VibeConfig())
    assert cat.preferred("architecture_design") == "opus"
    assert cat.task_fallback("architecture_design") == "sonnet"
    assert cat.substitutes("opus", "architecture_design") == ["sonnet", "haiku"]
    # bug_fix prefers sonnet with fallback opus: that fallback goes first
    assert cat.substitutes("sonnet", "bug_fix") == ["opus", "haiku"]
    # a tier that is not the type's preferred one: next tier down, then up
    assert cat.substitutes("sonnet", "architecture_design") == ["haiku", "opus"]


# -- R4.1 complexity -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "level"), [(0, "simple"), (4_999, "simple"), (5_000, "moderate"),
                          (20_000, "moderate"), (20_001, "complex")],
)
def test_r4_1_expected_output_token_levels(tokens: int, level: str) -> None:
    """R4.1: simple < 5,000; moderate 5,000–20,000; complex > 20,000 output tokens."""
    f = ScoredComplexity().features(info(tokens=tokens))
    assert f.output == level


@pytest.mark.parametrize(
    ("prompt", "task_type", "kind"),
    [("format the module", "code_modification", "simple"),
     ("update the readme docs", "code_modification", "simple"),
     ("fix the crash in the parser", "bug_fix", "moderate"),
     ("write tests for the cache", "feature_implementation", "moderate"),
     ("security review of the login flow", "code_modification", "complex"),
     ("optimise the hot loop", "code_modification", "complex"),
     ("", "architecture_design", "complex"), ("", "question_answering", "simple")],
)
def test_r4_1_task_type_kinds(prompt: str, task_type: str, kind: str) -> None:
    """R4.1: simple (formatting, doc update), moderate (bug fix, tests), complex (security…)."""
    assert ScoredComplexity().features(info(task_type=task_type, prompt=prompt)).kind == kind


def test_r4_1_reasoning_depth_from_text_or_given() -> None:
    """R4.1: reasoning depth direct / multi-step / architecture and trade-offs."""
    p = ScoredComplexity()
    assert p.features(info(prompt="compare the trade-offs of two caches")).depth == "architecture"
    assert p.features(info(prompt="investigate, then patch")).depth == "multi_step"
    assert p.features(info(prompt="rename x", complexity="simple")).depth == "direct"
    assert p.features(info(prompt="compare", depth="direct")).depth == "direct"


@pytest.mark.parametrize(
    ("features", "task_type", "prompt", "tier", "score"),
    [(SIMPLE, "code_modification", "format the file", "haiku", 0),
     (MODERATE, "bug_fix", "fix the bug", "sonnet", 6),
     (COMPLEX, "architecture_design", "design the storage layer", "opus", 12),
     # one moderate feature among simple ones stays on haiku (score 2)
     ({**SIMPLE, "tokens": 8_000}, "code_modification", "format the file", "haiku", 2),
     # two moderate features: sonnet (score 4)
     ({**SIMPLE, "tokens": 8_000}, "bug_fix", "fix the typo bug", "sonnet", 4),
     # a complex kind with two moderate features: opus (2 + 2 + 4)
     (MODERATE, "code_modification", "security review", "opus", 8),
     # a complex kind alone: sonnet (0 + 0 + 4)
     (SIMPLE, "code_modification", "security review", "sonnet", 4)],
)
def test_r4_1_score_bands(features: dict[str, Any], task_type: str, prompt: str, tier: str,
                          score: int) -> None:
    """R4.1: score 0–3 → haiku, 4–6 → sonnet, 7+ → opus."""
    a = ScoredComplexity().assess(info(task_type=task_type, prompt=prompt, **features))
    assert (a.tier, a.score) == (tier, score)
    assert a.reason.startswith(f"{tier} (score {score}: output ")


def test_r4_1_band_edges() -> None:
    """R4.1: 3 → haiku, 4 → sonnet, 6 → sonnet, 7 → opus."""
    p = ScoredComplexity()
    assert [p.tier_of(s) for s in (0, 3, 4, 6, 7, 12)] == [
        "haiku", "haiku", "sonnet", "sonnet", "opus", "opus"]


def test_r4_1_tasks_alike_share_one_assessment_until_something_is_learned() -> None:
    """R4.1: tasks that differ only in id share their features and assessment (a run of
    thousands of alike tasks holds one); what is learned (R4.3) gives a new one."""
    p = ScoredComplexity()
    a, b = (info(task_id=t, prompt="fix the bug", **SIMPLE) for t in ("a", "b"))
    assert p.features(a) is p.features(b)
    first = p.assess(a)
    assert p.assess(b) is first
    assert p.assess(info(task_id="c", prompt="fix the other bug", **SIMPLE)) is not first
    p.learn(a, "sonnet")
    raised = p.assess(b)
    assert raised is not first and raised.score > first.score


# -- R4.2 selection --------------------------------------------------------------------


def test_r4_2_complexity_to_model_with_reason_and_fallback() -> None:
    """R4.2: complexity → model; the reason reads 'complexity: …, budget: …%'; a fallback."""
    router, _ = make_router()
    d = router.choose(info(task_type="bug_fix", prompt="fix the bug", **MODERATE), 0.1)
    assert d.model == "sonnet"
    assert d.reason.startswith("complexity: ")
    assert "budget: 10%" in d.reason
    assert d.fallback == "opus"  # bug_fix: preferred sonnet, fallback opus


def test_r4_2_budget_above_70_pct_one_tier_down() -> None:
    """R4.2: more than 70 % of the budget used → one tier down (not at exactly 70 %)."""
    router, _ = make_router()
    task = info(task_type="architecture_design", prompt="design it", **COMPLEX)
    assert router.choose(task, 0.70).model == "opus"
    d = router.choose(task, 0.71)
    assert d.model == "sonnet" and d.downgraded and "one tier down" in d.reason
    cheap = info(prompt="format", **SIMPLE)
    assert router.choose(cheap, 0.95).model == "haiku"  # nothing below haiku


def test_r4_2_unavailable_model_uses_its_fallback() -> None:
    """R4.2/R6.1: an unavailable model is replaced by its fallback (architecture: sonnet)."""
    router, _ = make_router()
    knock_out(router.health, "opus")
    d = router.choose(info(task_type="architecture_design", prompt="design", **COMPLEX), 0.0)
    assert d.model == "sonnet" and d.substituted and "opus unavailable" in d.reason
    assert d.wanted == "opus"


def test_r4_2_high_capability_floor_is_sonnet() -> None:
    """R4.2: a task that requires high capability gets at least sonnet."""
    router, _ = make_router()
    d = router.choose(info(prompt="format", high=True, **SIMPLE), 0.0)
    assert d.model == "sonnet" and "requires high capability" in d.reason
    # the floor applies after budget pressure and availability
    knock_out(router.health, "sonnet")
    d = router.choose(info(prompt="format", high=True, **SIMPLE), 0.9)
    assert d.model == "opus"


def test_r4_2_floor_unmet_when_only_haiku() -> None:
    """R4.2: with only haiku usable the floor cannot be met; the decision says so."""
    router, _ = make_router()
    knock_out(router.health, "sonnet")
    knock_out(router.health, "opus")
    d = router.choose(info(prompt="format", high=True, **SIMPLE), 0.0)
    assert d.model == "haiku" and d.floor_unmet and d.fallback is None


def test_r4_2_policy_order_budget_then_availability() -> None:
    """R4.2 order: budget downgrade happens before the availability substitution."""
    policy = CheapestCapableRouting()
    a = ScoredComplexity().assess(info(task_type="architecture_design", **COMPLEX))
    data = RoutingInput(
        task=info(task_type="architecture_design", **COMPLEX), assessment=a,
        budget_fraction=0.8, tiers=("haiku", "sonnet", "opus"),
        usable=frozenset({"haiku", "opus"}),
        substitutes={"sonnet": ("haiku", "opus"), "opus": ("sonnet", "haiku"),
                     "haiku": ("sonnet", "opus")},
    )
    d = policy.select(data)
    # opus → (budget) sonnet → (unavailable) haiku
    assert d.model == "haiku" and d.downgraded and d.substituted


# -- R4.3 correction -------------------------------------------------------------------


def test_r4_3_haiku_failing_twice_upgrades() -> None:
    """R4.3: haiku failing twice → the task's next calls go to sonnet, logged once."""
    router, rec = make_router()
    task = info(prompt="format the file", **SIMPLE)
    assert router.choose(task, 0.0).model == "haiku"
    assert router.report_outcome(task, "haiku", success=False) is None
    with structlog.testing.capture_logs() as logs:
        up = router.report_outcome(task, "haiku", success=False)
    assert up is not None and (up.from_model, up.to_model) == ("haiku", "sonnet")
    assert router.choose(task, 0.0).model == "sonnet"
    events = rec.named("routing_upgrade")
    assert len(events) == 1
    assert events[0].message == "upgrading from haiku to sonnet due to quality issues"
    assert any(entry["event"] == "routing_upgrade" for entry in logs)


def test_r4_3_incomplete_output_counts_as_failure() -> None:
    """R4.3: incomplete output is a failure signal."""
    router, _ = make_router()
    task = info(prompt="format", **SIMPLE)
    router.report_outcome(task, "haiku", success=True, complete=False)
    up = router.report_outcome(task, "haiku", success=True, complete=False)
    assert up is not None and up.to_model == "sonnet"


def test_r4_3_low_quality_upgrades_at_once_on_any_tier() -> None:
    """R4.3: a judge score < 0.5 upgrades immediately (sonnet → opus too); 0.5 does not."""
    router, rec = make_router()
    task = info(task_type="bug_fix", prompt="fix the bug", **MODERATE)
    assert router.report_outcome(task, "sonnet", success=True, quality=0.5) is None
    up = router.report_outcome(task, "sonnet", success=True, quality=0.3)
    assert up is not None and up.to_model == "opus"
    assert router.choose(task, 0.0).model == "opus"
    assert "quality 0.30" in rec.named("routing_upgrade")[0].data["reason"]


def test_r4_3_sonnet_failure_alone_does_not_upgrade() -> None:
    """R4.3: the two-failure rule is haiku's; a sonnet failure with fine quality keeps sonnet."""
    router, _ = make_router()
    task = info(task_type="bug_fix", prompt="fix the bug", **MODERATE)
    for _ in range(3):
        assert router.report_outcome(task, "sonnet", success=False, quality=0.7) is None


def test_r4_3_opus_cannot_upgrade() -> None:
    """R4.3: at the top tier a quality problem is reported, not upgraded."""
    router, rec = make_router()
    task = info(task_type="architecture_design", **COMPLEX)
    assert router.report_outcome(task, "opus", success=True, quality=0.1) is None
    assert rec.names() == ["routing_no_upgrade"]


def test_r4_3_similar_tasks_learn_higher_score() -> None:
    """R4.3: a correction raises the score of similar later tasks (same type, same features)."""
    router, _ = make_router()
    first = info("a", "code_modification", prompt="format the parser module", **SIMPLE)
    similar = info("b", "code_modification", prompt="format the lexer module", **SIMPLE)
    other_type = info("c", "question_answering", prompt="format the parser module", **SIMPLE)
    assert router.complexity.assess(similar).score == 0
    router.report_outcome(first, "haiku", success=True, quality=0.2)
    a = router.complexity.assess(similar)
    assert (a.score, a.raw_score, a.learned, a.tier) == (2, 0, True, "haiku")
    router.report_outcome(info("d", prompt="format the io module", **SIMPLE), "haiku",
                          success=True, quality=0.2)
    d = router.choose(similar, 0.0)
    assert d.model == "sonnet" and "(learned)" in d.reason
    assert router.complexity.assess(other_type).score == 0


def test_r4_3_task_near_the_band_edge_moves_up_after_one_correction() -> None:
    """R4.3: a similar task scoring 2 reaches sonnet's band (4) after one correction."""
    router, _ = make_router()
    task = info("a", "bug_fix", prompt="fix the bug in the parser", **SIMPLE)
    later = info("b", "bug_fix", prompt="fix the bug in the lexer", **SIMPLE)
    assert router.choose(later, 0.0).model == "haiku"
    router.report_outcome(task, "haiku", success=False)
    router.report_outcome(task, "haiku", success=False)
    assert router.choose(later, 0.0).model == "sonnet"


def test_r4_3_similar_by_keywords_with_different_levels() -> None:
    """R4.3: mostly the same words and the same type count as similar even if levels differ;
    a raise stops at the band of the tier the task was upgraded to."""
    p = ScoredComplexity()
    a = info("a", "bug_fix", prompt="fix the flaky retry in the http client", **SIMPLE)
    b = info("b", "bug_fix", prompt="fix the flaky retry in the http client code",
             complexity="simple", tokens=6_000, depth="direct")
    unrelated = info("c", "bug_fix", prompt="handle unicode in csv export",
                     complexity="simple", tokens=6_000, depth="direct")
    for _ in range(3):
        p.learn(a, "opus")
    assert p.assess(b).raw_score == 4 and p.assess(b).score == 7  # capped at opus's floor
    assert p.assess(unrelated).tier == "sonnet" and not p.assess(unrelated).learned


def test_r4_3_budget_pressure_never_undoes_an_upgrade() -> None:
    """R4.3 before R4.2's budget step: an upgraded task is not pushed back below its new tier."""
    router, _ = make_router()
    task = info(prompt="format", **SIMPLE)
    router.report_outcome(task, "haiku", success=True, quality=0.1)
    assert router.choose(task, 0.95).model == "sonnet"
    router.forget(task.task_id)
    assert router.choose(task, 0.95).model == "haiku"


def test_router_resolves_policies_by_name() -> None:
    """R7.4: policies named by import string or built-in name; unknown names are config errors."""
    assert isinstance(load_policies(VibeConfig()).complexity, ScoredComplexity)
    cfg = VibeConfig.model_validate({"policies": {"complexity": "scored"}})
    assert isinstance(load_policies(cfg).complexity, ScoredComplexity)
    with pytest.raises(ConfigError):
        load_policies(VibeConfig.model_validate({"policies": {"complexity": "nope"}}))


def test_task_info_from_handle_uses_profile_params_and_hints() -> None:
    """R4.1 inputs come from the task profile, its params and per-call hints."""
    cfg = VibeConfig()
    spec = TaskSpec(id="x", agent="coder", prompt="Fix the crash", priority="background",
                    params={"expected_output_tokens": 9000}, requires_high_capability=True)
    h = TaskHandle(spec, resolve_task(spec, cfg))
    ti = task_info(h, {"reasoning_depth": "architecture"})
    assert (ti.task_type, ti.expected_output_tokens, ti.reasoning_depth) == (
        "bug_fix", 9000, "architecture")
    assert ti.priority == 1 and ti.requires_high_capability
    assert isinstance(Router(cfg, bus=make_router()[0].bus).choose(ti, 0.0).model, str)


def test_r4_3_learned_raise_fades_after_similar_successes() -> None:
    """R4.3: each correction is taken back by 3 similar successes, so raises fade."""
    router, _ = make_router()
    first = info("a", "bug_fix", prompt="fix the bug in the parser", **SIMPLE)
    later = info("b", "bug_fix", prompt="fix the bug in the lexer", **SIMPLE)
    router.report_outcome(first, "haiku", success=True, quality=0.2)  # 2 → 4
    assert router.choose(later, 0.0).model == "sonnet"
    router.report_outcome(later, "sonnet", success=True, quality=0.9)  # 2 + 1 = 3
    assert router.choose(later, 0.0).model == "haiku"
    router.report_outcome(first, "haiku", success=True, quality=0.2)
    router.report_outcome(first, "haiku", success=True, quality=0.2)
    models = []
    for _ in range(7):  # pressure 2⅔ left: six successes to fall below one level's worth
        models.append(router.choose(later, 0.0).model)
        router.report_outcome(later, models[-1], success=True, quality=0.9)
    assert models == ["sonnet"] * 6 + ["haiku"]


def test_r4_3_failures_do_not_confirm() -> None:
    """R4.3: failed or incomplete outcomes never weaken a learned raise; successes do."""
    router, _ = make_router()
    t = info("a", "bug_fix", prompt="fix the bug", **SIMPLE)
    router.report_outcome(t, "haiku", success=True, quality=0.1)
    for _ in range(5):
        router.report_outcome(t, "sonnet", success=False, quality=0.7)
        router.report_outcome(t, "sonnet", success=True, quality=0.7, complete=False)
    assert router.complexity.assess(t).tier == "sonnet"
    router.report_outcome(t, "sonnet", success=True, quality=0.7)
    assert router.complexity.assess(t).tier == "haiku"
