"""CLI manners (#23; R7.2 command line): ``--version``, flags without placeholders,
listed choices, ``run --state-dir``, ``--config`` for the read-only commands, one-line
errors when piped, ``report --html`` alone, real report dates, a readable ``review``.

The paused-task tests start the installed ``vibe-engine run`` in the background; it
pauses a task on its budget, and ``decide`` (the state found through ``--config``)
reviews and finishes it, as a user would from a second terminal.  The other commands
run in-process through the real ``main`` (stdout and stderr are not terminals there
either); one test pipes the real binary at 40 columns.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents import discover_agents, make_provider
from scheduler.cli._demo import demo_config
from scheduler.core import FixedWallClock
from scheduler.runtime import Orchestrator
from scheduler.testing import FRIDAY, run_virtual
from tests._cli_helpers import CliResult, assert_one_line_exit_2, cli, files_under
from tests._helpers import SATURDAY
from tests._observe_helpers import instant_shell_context

BIN = str(Path(sys.executable).parent / "vibe-engine")
CONFIG = """\
state_dir = "where-the-config-says"

[provider.simulated]
time_scale = 0.01

[[tasks]]
id = "tight"
agent = "qa"
prompt = "What is a lease?"
budget = { tokens = 50 }

[[tasks]]
id = "fine"
agent = "qa"
prompt = "What is a budget?"
"""


def _bin(*argv: str, cwd: Path, columns: int = 40) -> subprocess.CompletedProcess[str]:
    """The real binary with stdout and stderr piped (no terminal), on a narrow width."""
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([BIN, *argv], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def test_r7_2_version() -> None:
    """#23: ``vibe-engine --version`` prints the installed version and exits 0."""
    from importlib.metadata import version

    out = cli(["--version"], Path.cwd())
    assert (out.code, out.stdout) == (0, f"vibe-engine {version('vibe-engine')}\n")


@pytest.mark.parametrize("command", ["run", "resume", "demo", "status", "decide", "report",
                                     "fake-api", "plugins"])
def test_r7_2_help_has_no_bool_placeholder_and_lists_choices(command: str) -> None:
    """#23: flags read ``--live / --no-live`` or ``--json`` (no ``<bool>``); ``--store``
    and ``--log-level`` list what they accept."""
    text = cli([command, "--help"], Path.cwd()).stdout
    assert "Usage: vibe-engine" in text and "<bool>" not in text, text
    assert "╭" not in text  # plain help: no boxes to break in a pipe or at 80 columns
    if "--log-level" in text:
        assert "[debug|info|warning|error|critical]" in text
    if "--store" in text:
        flat = " ".join(text.split())
        for form in ("sqlite,", "sqlite:///PATH", "memory", "redis://HOST:PORT/DB"):
            assert form in flat, (form, text)


@pytest.mark.parametrize("command", ["run", "resume", "demo", "status", "decide", "report",
                                     "fake-api", "serve", "plugins"])
def test_r7_2_every_option_says_what_it_does(command: str) -> None:
    """R7.2: each option of each command has a help text, and the help names no issue or
    spec id (``#21``, ``R3.4``): they mean nothing to someone reading ``--help``."""
    import typer.core
    import typer.main

    from scheduler.cli._app import app

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    params = group.commands[command].params
    assert [p.name for p in params if isinstance(p, typer.core.TyperOption) and not p.help] == []
    text = cli([command, "--help"], Path.cwd()).stdout
    assert not re.search(r"#\d|\bR\d+\.\d", text), text


def test_r3_4_decide_add_without_an_amount_names_the_options(tmp_path: Path) -> None:
    """R3.4, R7.2: ``decide T add`` with no amount says which options give one (not the
    decision's field names), in one line, before looking for a state directory."""
    line = assert_one_line_exit_2(cli(["decide", "t1", "add"], tmp_path), "--tokens N",
                                  "--cost USD")
    assert "cost_usd" not in line
    assert files_under(tmp_path) == set()


def test_r7_2_report_from_after_to_is_refused(tmp_path: Path) -> None:
    """R7.2: ``report --from`` a day after ``--to`` is a typo, refused in one line (an empty
    report would read as nothing spent)."""
    (tmp_path / "st").mkdir()
    argv = ["report", "--state-dir", "st", "--store", "memory", "--from", "2026-12-05",
            "--to", "2026-12-01"]
    assert_one_line_exit_2(cli(argv, tmp_path), "--from", "after --to 2026-12-01")


def test_r7_2_bad_store_and_config_one_line_when_piped(tmp_path: Path) -> None:
    """#23: errors stay one line through a pipe even 40 columns wide; nothing written."""
    long_dir = "a-state-directory-name-much-wider-than-forty-columns/" * 3
    for argv, needle in ((["status", "--store", "postgres"], "--store"),
                         (["report", "--state-dir", long_dir], "does not exist")):
        out = _bin(*argv, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, (argv, out.stderr)
        assert needle in lines[0] and lines[0].startswith("error: "), (argv, lines)
        assert "\x1b[" not in out.stderr  # no colour codes in a pipe
    for argv, needle in ((["report", "--config", "missing.toml"], "missing.toml"),
                         (["decide", "t", "review", "-c", "missing.toml"], "missing.toml"),
                         (["resume", "--store", "nosuch"], "--store"),
                         (["report", "--store", "sqlite:///"], "--store")):
        assert_one_line_exit_2(cli(argv, tmp_path), needle)
    assert files_under(tmp_path) == set()


@dataclass
class PausedRun:
    """What the user saw around a task paused on its budget."""

    root: Path
    review: CliResult
    review_json: CliResult
    finish: CliResult
    run_code: int


def _wait_for_review(root: Path, proc: subprocess.Popen[str]) -> CliResult:
    deadline = time.monotonic() + 45  # noqa: TID251 - a real subprocess, real time
    socket = root / "state" / "control" / "decide.sock"
    while not socket.exists() and proc.poll() is None and time.monotonic() < deadline:  # noqa: TID251
        time.sleep(0.05)  # noqa: TID251 - cheaper than starting `decide` again and again
    while True:
        review = cli(["decide", "tight", "review", "--config", "c.toml"], root)
        if review.code == 0 or proc.poll() is not None:
            return review
        if time.monotonic() > deadline:  # noqa: TID251
            return review
        time.sleep(0.1)  # noqa: TID251


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PausedRun]:
    root = tmp_path_factory.mktemp("paused")
    (root / "c.toml").write_text(CONFIG)
    proc = subprocess.Popen([BIN, "run", "c.toml", "--no-live", "--log-level", "error",
                             "--state-dir", "state"], cwd=root, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # `--config c.toml` would point at the config's own state_dir: name the real one
        (root / "c.toml").write_text(CONFIG.replace("where-the-config-says", "state"))
        review = _wait_for_review(root, proc)
        review_json = cli(["decide", "tight", "review", "-c", "c.toml", "--json"], root)
        finish = cli(["decide", "tight", "finish", "-c", "c.toml"], root)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    yield PausedRun(root, review, review_json, finish, code)


def test_r7_2_run_state_dir_overrides_the_config(paused_run: PausedRun) -> None:
    """#23: ``run --state-dir state`` puts the store there, not in the config's folder."""
    assert (paused_run.root / "state" / "vibe.db").is_file()
    assert not (paused_run.root / "where-the-config-says").exists()
    assert paused_run.run_code == 1  # a task was finished on its budget, not completed


def test_r3_4_decide_review_is_readable_with_json_for_machines(paused_run: PausedRun) -> None:
    """#23 / R3.4: ``decide … review`` (state dir found through ``--config``) prints a
    summary for people with the commands that answer; ``--json`` the raw reply."""
    review = paused_run.review
    assert review.code == 0, review
    text = review.stdout
    assert text.startswith("Task tight (session s-")
    assert "paused:     budget exceeded for task:tight" in text
    assert "used:       0 tokens, $0.0000, 0 calls" in text
    assert "vibe-engine decide tight add --tokens N --state-dir state" in text
    assert "vibe-engine decide tight finish --state-dir state" in text
    assert "{" not in text  # not a JSON dump
    reply = json.loads(paused_run.review_json.stdout)
    assert reply["action"] == "review" and reply["summary"]["task_id"] == "tight"
    assert reply["summary"]["pause"]["dimension"] == "tokens"
    assert paused_run.finish.code == 0
    assert "finish for tight: sent to the running orchestrator" in paused_run.finish.stdout


def test_r7_2_status_and_report_find_the_state_through_config(paused_run: PausedRun) -> None:
    """#23: ``status --config`` and ``report --config`` read the config's state_dir."""
    root = paused_run.root
    status = cli(["status", "--config", "c.toml", "--json"], root)
    assert status.code == 0, status
    assert {t["task_id"] for t in json.loads(status.stdout)["tasks"]} == {"tight", "fine"}
    report = cli(["report", "-c", "c.toml", "--json"], root)
    assert report.code == 0, report
    assert json.loads(report.stdout)["total"]["calls"] >= 1


def test_r7_2_report_html_does_not_print_the_tables(paused_run: PausedRun) -> None:
    """#23: ``report --html F`` writes F and says so, without the text report."""
    out = cli(["report", "-c", "c.toml", "--html", "r.html"], paused_run.root)
    assert out.code == 0, out
    assert out.stdout == "HTML report written to r.html\n"
    assert (paused_run.root / "r.html").read_text().startswith("<!DOCTYPE html>")
    both = cli(["report", "-c", "c.toml", "--html", "r2.html", "--json"], paused_run.root)
    assert json.loads(both.stdout)["total"]["calls"] >= 1  # stdout stays one JSON document
    assert both.stderr == "HTML report written to r2.html\n"


def test_r7_2_report_header_shows_the_first_and_last_days(tmp_path: Path) -> None:
    """#23: the header names the first and last recorded days, not "start .. today"."""
    state = tmp_path / "state"
    for day in (FRIDAY, SATURDAY):
        config = demo_config(state, tasks=2, time_scale=0.01, staged=False)
        orch = Orchestrator(config, provider=make_provider(config), agents=discover_agents(),
                            wall=FixedWallClock(day), context_factory=instant_shell_context)
        run_virtual(orch.run)
    out = cli(["report", "--state-dir", "state"], tmp_path)
    assert out.code == 0, out
    header = out.stdout.splitlines()[0]
    assert header == f"vibe-engine report {FRIDAY} .. {SATURDAY} (2 days)"
    asked = cli(["report", "--state-dir", "state", "--from", str(SATURDAY)], tmp_path)
    assert asked.stdout.splitlines()[0] == (
        f"vibe-engine report {SATURDAY} (asked: {SATURDAY} .. last)")
    assert_one_line_exit_2(cli(["report", "--state-dir", "state", "--from", "friday"],
                               tmp_path), "--from")
