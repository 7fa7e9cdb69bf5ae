"""R1.3: a budget section given in a config is laid key by key over that scope's defaults.

Setting one key of ``[budgets.day]``, ``[budgets.session]`` or ``[budgets.task]`` keeps the
other keys' R1.3 defaults (adding a token cap never removes a dollar cap); the word
``"unlimited"`` (TOML has no null) turns one default off.  Checked through ``vibe-engine
run`` on a TOML file, as a user gets it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scheduler.config import VibeConfig, config_from_dict
from tests._cli_helpers import assert_one_line_exit_2, cli, files_under

#: Four one-call tasks whose every call costs $8 (800 output tokens at $10,000 per
#: million), each with a cost cap of its own far above that: only the day's cap stops them.
RUN = """
[alerts]
decision_timeout_s = 0.5
[provider.simulated]
time_scale = 0.0
output_tokens = [800, 800]
failure_rate = { haiku = 0.0, sonnet = 0.0, opus = 0.0 }
[models.haiku]
output_usd_per_mtok = 10000.0
[models.sonnet]
output_usd_per_mtok = 10000.0
[models.opus]
output_usd_per_mtok = 10000.0
""" + "".join(f"""
[[tasks]]
id = "q{i}"
agent = "qa"
prompt = "Where is the config loaded?"
budget = {{ cost_usd = 1000.0 }}
""" for i in range(1, 5))



def _run(tmp_path: Path, budgets: str) -> tuple[float, list[dict[str, Any]], dict[str, Any]]:
    """Run the config; the run's spend, its budget-pause events and its ``status.json``."""
    (tmp_path / "c.toml").write_text('state_dir = "st"\n' + budgets + RUN)
    result = cli(["run", "c.toml", "--no-live", "--log-level", "warning"], tmp_path)
    assert result.code in (0, 1), result
    spent = sum(json.loads(p.read_text())["usage"]["cost_usd"]
                for p in (tmp_path / "st" / "tasks").glob("*/usage.json"))
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    pauses = [e for e in events if e.get("event") == "pause_requested"]
    status = json.loads((tmp_path / "st" / "status.json").read_text())
    return spent, pauses, status


def _limits(status: dict[str, Any], scope: str) -> dict[str, float]:
    return {b["dimension"]: b["limit"] for b in status["budgets"]
            if b["scope"].startswith(scope + ":")}


def test_r1_3_a_day_token_cap_keeps_the_day_cost_cap(tmp_path: Path) -> None:
    """R1.3: ``[budgets.day] tokens = …`` alone keeps the $20 day cost cap: two $8 calls
    run, the next two pause at the cap ($16 spent, not $32).  ``[budgets.session]`` with
    a token cap and opus turned off keeps the sonnet and haiku caps; ``[budgets.task]``
    with a token cap keeps the file-edit and shell limits."""
    spent, pauses, status = _run(tmp_path, """
[budgets]
weekend_day_cost_usd = 1000.0  # above the weekday's: the $20 holds on any day
[budgets.day]
tokens = 100000
[budgets.session]
tokens = 400000
tokens_by_model = { opus = "unlimited" }
[budgets.task]
tokens = 30000
""")
    assert round(spent, 2) == 16.0
    assert sorted(p["task_id"] for p in pauses) == ["q3", "q4"]
    assert all(p["scope"].startswith("day:") and p["dimension"] == "cost_usd" for p in pauses)
    assert _limits(status, "day") == {"tokens": 100_000, "cost_usd": 20.0}
    assert _limits(status, "session") == {"tokens": 400_000, "tokens:sonnet": 200_000,
                                          "tokens:haiku": 500_000}
    budget = json.loads((tmp_path / "st" / "tasks" / "q1" / "usage.json").read_text())["budget"]
    assert (budget["call_time_s"], budget["file_edits"], budget["shell_commands"],
            budget["dangerous_commands"]) == (300.0, 50, 100, 10)


def test_r1_3_unlimited_turns_the_day_cost_cap_off(tmp_path: Path) -> None:
    """R1.3: ``cost_usd = "unlimited"`` turns the day's default cost cap off (TOML has no
    null), and ``weekend_day_cost_usd`` the weekend's: all four $8 calls run, nothing
    pauses, on any day."""
    spent, pauses, status = _run(tmp_path, """
[budgets]
weekend_day_cost_usd = "Unlimited"
[budgets.day]
tokens = 100000
cost_usd = "unlimited"
""")
    assert round(spent, 2) == 32.0 and pauses == []
    assert _limits(status, "day") == {"tokens": 100_000}


@pytest.mark.parametrize(("section", "field"), [
    ("[budgets.day]\ncost_usd = 'lots'\n", "budgets.day.cost_usd"),
    ("[budgets.session]\ntokens_by_model = { opus = 'none' }\n",
     "budgets.session.tokens_by_model.opus"),
    ("[budgets]\nweekend_day_cost_usd = 'off'\n", "budgets.weekend_day_cost_usd"),
])
def test_r1_3_a_word_other_than_unlimited_is_refused_naming_the_field(
    tmp_path: Path, section: str, field: str,
) -> None:
    """A limit given as any other word stops ``run`` in one line naming the field, exit 2,
    nothing written ("none" is refused: it could mean zero allowed)."""
    (tmp_path / "c.toml").write_text(section + RUN)
    line = assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], tmp_path), field)
    assert "unlimited" in line
    assert files_under(tmp_path) == {"c.toml"}


def test_r1_3_a_new_task_cost_cap_moves_its_warning_and_stored_configs_resume_as_they_ran(
) -> None:
    """R1.3/R3.1: ``[budgets.task] cost_usd = 2`` moves the $0.70 warning with it ($1.40).
    A stored run config (what ``resume`` validates) is taken as it is: a session stored
    with a replaced section, or with a tier turned off, resumes with the same limits."""
    cfg = config_from_dict({"budgets": {"task": {"cost_usd": 2},
                                        "task_tokens_by_complexity": {"simple": 9}}})
    assert (cfg.budgets.task.cost_usd, cfg.budgets.task.cost_warning_usd) == (2.0, 1.4)
    assert cfg.budgets.task.file_edits == 50
    task = config_from_dict({"tasks": [{"id": "t", "agent": "qa",
                                        "budget": {"time_s": "unlimited"}}]}).tasks[0]
    assert task.budget is not None and task.budget.model_fields_set == {"time_s"}
    assert task.budget.time_s is None
    assert cfg.budgets.task_tokens_by_complexity == {"simple": 9, "moderate": 50_000,
                                                     "complex": 150_000}
    old = VibeConfig().model_dump(mode="json")
    old["budgets"]["day"] = {**{k: None for k in old["budgets"]["day"]}, "tokens": 5,
                             "tokens_by_model": {}}
    old["budgets"]["session"]["tokens_by_model"] = {"haiku": 7}
    resumed = VibeConfig.model_validate(old, context={"resuming": True})
    assert resumed.budgets.day.cost_usd is None and resumed.budgets.day.tokens == 5
    assert resumed.budgets.session.tokens_by_model == {"haiku": 7}
    assert VibeConfig.model_validate(resumed.model_dump(mode="json"),
                                     context={"resuming": True}) == resumed


def test_r1_3_per_model_caps_merge_by_tier_and_an_empty_table_means_none() -> None:
    """R1.3: ``tokens_by_model`` naming one tier keeps the others' caps; an empty table
    (how configs written before sections kept their defaults turn them off, e.g. the
    benchmarks') leaves no tier a cap -- not every default cap."""
    one = config_from_dict({"budgets": {"session": {"tokens_by_model": {"opus": 7}}}})
    assert one.budgets.session.tokens_by_model == {"opus": 7, "sonnet": 200_000,
                                                   "haiku": 500_000}
    none = config_from_dict({"budgets": {"session": {"tokens_by_model": {}}}})
    assert none.budgets.session.tokens_by_model == {}
    assert none.budgets.session.tokens == 500_000  # the section's other keys keep theirs
