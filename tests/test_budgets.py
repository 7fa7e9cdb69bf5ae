"""Budget defaults, task types and config loading (R1.1, R1.3, R1.4)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from scheduler import ConfigError, Limits, TaskSpec, VibeConfig, config_from_dict, load_config
from scheduler.budget import day_limits, detect_task_type, resolve_task
from tests._helpers import SATURDAY


def test_r1_3_defaults_match_the_spec() -> None:
    """R1.3: every default number of the spec is the built-in config."""
    b = VibeConfig().budgets
    assert b.task_tokens_by_complexity == {"simple": 20_000, "moderate": 50_000,
                                           "complex": 150_000}
    assert b.session.tokens == 500_000
    assert b.session.tokens_by_model == {"opus": 50_000, "sonnet": 200_000, "haiku": 500_000}
    assert b.task.time_s == 1800 and b.task.call_time_s == 300
    assert b.task_time_s_by_complexity == {"simple": 300, "moderate": 1800, "complex": 3600}
    assert (b.task.cost_usd, b.task.cost_warning_usd) == (1.00, 0.70)
    assert b.day.cost_usd == 20.00 and b.weekend_day_cost_usd == 5.00
    assert (b.task.file_edits, b.task.shell_commands, b.task.dangerous_commands) == (50, 100, 10)


def test_r1_3_weekend_day_budget_on_saturday_and_sunday() -> None:
    """R1.3: the day budget drops to $5 on Saturday and Sunday automatically."""
    cfg = VibeConfig()
    assert day_limits(cfg, date(2026, 11, 27)).cost_usd == 20.0  # Friday
    assert day_limits(cfg, SATURDAY).cost_usd == 5.0
    assert day_limits(cfg, date(2026, 11, 29)).cost_usd == 5.0  # Sunday
    assert day_limits(cfg, date(2026, 11, 30)).cost_usd == 20.0  # Monday


def test_r1_3_weekend_lowers_never_raises_the_day_budget() -> None:
    """R1.3: the weekend limit lowers the day budget; a weekday limit already below it stays."""
    cfg = VibeConfig.model_validate({"budgets": {"day": {"cost_usd": 3.0}}})
    assert day_limits(cfg, SATURDAY).cost_usd == 3.0
    unlimited = VibeConfig.model_validate({"budgets": {"day": {"cost_usd": None}}})
    assert day_limits(unlimited, SATURDAY).cost_usd == 5.0


def test_r1_4_task_type_table() -> None:
    """R1.4: the task-type table's tokens, time and cost; architecture prefers opus."""
    t = VibeConfig().task_types
    rows = {k: (v.tokens, v.time_s, v.cost_usd) for k, v in t.items()}
    assert rows == {
        "question_answering": (10_000, 120, 0.10),
        "code_modification": (50_000, 900, 0.50),
        "bug_fix": (80_000, 1800, 0.80),
        "feature_implementation": (150_000, 3600, 1.50),
        "architecture_design": (100_000, 1800, 1.00),
    }
    assert t["architecture_design"].preferred_model == "opus"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What does this function return?", "question_answering"),
        ("Fix the crash in the CSV parser", "bug_fix"),
        ("Implement a new export feature", "feature_implementation"),
        ("Design the architecture for failover with trade-offs", "architecture_design"),
        ("Rename the module and update imports", "code_modification"),
    ],
)
def test_r1_4_task_type_detected_by_keywords(text: str, expected: str) -> None:
    """R1.4: the type is detected from the task text."""
    assert detect_task_type(text, VibeConfig().task_types) == expected


def test_r1_4_user_override_wins_over_detection() -> None:
    """R1.4: the user can always override the detected type (and complexity, R1.3)."""
    cfg = VibeConfig()
    spec = TaskSpec(id="t", agent="coder", prompt="Fix the crash", task_type="question_answering")
    p = resolve_task(spec, cfg)
    assert p.task_type == "question_answering" and not p.type_detected
    assert p.limits.tokens == 10_000 and p.limits.cost_usd == 0.10 and p.limits.time_s == 120
    spec2 = TaskSpec(id="t", agent="coder", prompt="Fix the crash", complexity="complex")
    p2 = resolve_task(spec2, cfg)
    assert p2.task_type == "bug_fix"
    assert p2.limits.tokens == 150_000 and p2.limits.time_s == 3600  # per-complexity table


def test_r1_3_complexity_auto_detected_from_classification() -> None:
    """R1.3: complexity comes from the task classification unless the user states it."""
    cfg = VibeConfig()
    assert resolve_task(TaskSpec(id="a", agent="x", prompt="Fix a typo in one file"),
                        cfg).complexity == "simple"
    assert resolve_task(TaskSpec(id="b", agent="x", prompt="Design the architecture"),
                        cfg).complexity == "complex"


def test_r1_1_explicit_task_budget_overrides_any_dimension() -> None:
    """R1.1: a budget may limit any subset of dimensions, overriding defaults."""
    spec = TaskSpec(id="t", agent="coder", prompt="x",
                    budget=Limits(tokens=123, file_edits=2, cache_read_tokens=7))
    lim = resolve_task(spec, VibeConfig()).limits
    assert (lim.tokens, lim.file_edits, lim.cache_read_tokens) == (123, 2, 7)
    assert lim.shell_commands == 100  # untouched default


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"budgets": {"session": {"tokens": -1}}}, "budgets.session.tokens"),
        ({"budgets": {"task": {"tokens_by_model": {"gpt-5": 10}}}},
         "budgets.task.tokens_by_model.gpt-5"),
        ({"tasks": [{"id": "a", "agent": "coder", "task_type": "poetry"}]}, "tasks.0.task_type"),
        ({"models": {"haiku": {"model_id": "x", "input_usd_per_mtok": -2,
                               "output_usd_per_mtok": 1}}}, "models.haiku.input_usd_per_mtok"),
        ({"budgets": {"bogus": 1}}, "budgets.bogus"),
    ],
)
def test_bad_config_names_field_and_value(data: dict[str, object], field: str) -> None:
    """A bad value fails with the dotted field path (negative, unknown model/type, typo)."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.field.startswith(field)
    assert field.split(".")[-1] in str(info.value)


def test_malformed_toml_and_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("budgets = [unclosed\n")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(bad)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("budgets: {session: [\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(bad_yaml)


def test_config_loads_from_toml_and_yaml(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[budgets.session]\ntokens = 1000\n[[tasks]]\nid = 'a'\nagent = 'qa'\n")
    yml = tmp_path / "c.yaml"
    yml.write_text("budgets:\n  session:\n    tokens: 1000\ntasks:\n  - {id: a, agent: qa}\n")
    assert load_config(toml) == load_config(yml)
    assert load_config(toml).budgets.session.tokens == 1000


@pytest.mark.parametrize(("text", "task_type", "expected"), [
    ("Fix a TYPO in one file", "code_modification", "simple"),
    ("Add a docstring", "feature_implementation", "complex"),  # a complex type stays so
    ("Redesign the whole thing, but only a typo", "question_answering", "complex"),
    ("weigh the trade-off", "code_modification", "complex"),
    ("what is it", "question_answering", "simple"),
    ("word " * 121, "question_answering", "moderate"),  # a long question is not simple
    ("word " * 121, "code_modification", "moderate"),
    ("word " * 120, "question_answering", "simple"),
])
def test_r1_3_complexity_from_the_type_nudged_by_hints(text: str, task_type: str,
                                                       expected: str) -> None:
    """R1.3: a task's complexity is its type's, unless a complex hint makes it complex, a
    simple one (in a type not complex) simple, or over 120 words a simple one moderate."""
    spec = TaskSpec(id="t", agent="a", prompt=text, task_type=task_type)
    assert resolve_task(spec, VibeConfig()).complexity == expected
