"""R5.6: ``depends_on`` edges in a config that close a cycle (a task on itself, a → b → c
→ a) are a bad config: one line naming the edge that closes it, exit 2, nothing written.
Such a run started, wrote its state, and waited for the deadlock detector to fail the
tasks (a task depending on itself: each requeue 10 s later, then failed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._cli_helpers import assert_one_line_exit_2, cli, files_under


def _task(task_id: str, *deps: str) -> str:
    quoted = ", ".join(f'"{d}"' for d in deps)
    return (f'[[tasks]]\nid = "{task_id}"\nagent = "qa"\nprompt = "What is x?"\n'
            f"depends_on = [{quoted}]\n")


@pytest.mark.parametrize(("tasks", "field", "cycle"), [
    (_task("a", "a"), "tasks.0.depends_on.0='a'", "a → a"),
    (_task("a", "b") + _task("b", "c") + _task("c", "z", "a") + _task("z"),
     "tasks.2.depends_on.1='a'", "a → b → c → a"),
])
def test_r5_6_a_dependency_cycle_in_the_config_is_refused_before_the_run(
    tmp_path: Path, tasks: str, field: str, cycle: str
) -> None:
    (tmp_path / "c.toml").write_text('state_dir = "st"\n' + tasks)
    result = cli(["run", "c.toml", "--no-live"], tmp_path)
    line = assert_one_line_exit_2(result, field)
    assert f"dependency cycle {cycle}" in line, line
    assert files_under(tmp_path) == {"c.toml"}


def test_r5_6_dependencies_that_share_a_task_are_no_cycle(tmp_path: Path) -> None:
    """A diamond (b and c on a, d on both) runs: only a closed loop is refused."""
    (tmp_path / "c.toml").write_text(
        'state_dir = "st"\n[provider.simulated]\ntime_scale = 0\n'
        + _task("a") + _task("b", "a") + _task("c", "a") + _task("d", "b", "c"))
    result = cli(["run", "c.toml", "--no-live", "--log-level", "error"], tmp_path)
    assert result.code == 0, result
