"""The docs' runnable examples run here (issue 9): plugin guide, policy guide, tutorial,
and the generated configuration reference is up to date."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import discover_agents, plugin_infos
from scheduler import TaskSpec, VibeConfig
from scheduler.runtime import Orchestrator
from scheduler.testing import ScriptedProvider

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
BIN = Path(sys.executable).parent / "vibe-engine"


@pytest.fixture
def examples_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield EXAMPLES


def _register_entry_point(site: Path, dist: str, group: str, name: str, target: str) -> None:
    """What `pip install` of a package with that entry point leaves on disk."""
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")


@pytest.mark.real_asyncio  # the agent runs `wc` as a real process
async def test_r7_3_plugin_guide_example_registered_by_entry_point(
    examples_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R7.3 (docs/guide-agent-plugin.md): the example agent, registered through an entry
    point, is discovered, listed with its distribution, and runs governed."""
    site = tmp_path / "site"
    _register_entry_point(site, "vibe-wordcount-example", "vibe_engine.agents", "wordcount",
                          "word_count_agent:WordCountAgent")
    monkeypatch.syspath_prepend(str(site))
    agents = discover_agents()
    assert "wordcount" in agents and "coder" in agents
    info = {p.name: p for p in plugin_infos()}["wordcount"]
    assert (info.distribution, info.version) == ("vibe-wordcount-example", "1.2.3")

    config = VibeConfig(state_dir=tmp_path / "state", store="memory", session_id="s1")
    orch = Orchestrator(config, provider=ScriptedProvider(), agents=agents)
    spec = TaskSpec(id="wc", agent="wordcount", prompt="Summarise this",
                    params={"text": "one two three four five"})
    report = await orch.run([spec])
    out = report.outcomes["wc"]
    assert out.status == "completed", out.reason
    assert orch.handles["wc"].result["words"] == 5
    assert (out.usage.calls, out.usage.file_edits, out.usage.shell_commands) == (1, 1, 1)
    assert out.usage.dangerous_commands == 0


@pytest.mark.real_asyncio  # the agent runs `wc` as a real process
async def test_plugin_guide_example_passed_as_a_factory(
    examples_path: Path, tmp_path: Path,
) -> None:
    """The same agent passed directly as a factory (no packaging), as the guide shows."""
    module = importlib.import_module("word_count_agent")
    config = VibeConfig(state_dir=tmp_path, store="memory", session_id="s1")
    orch = Orchestrator(config, provider=ScriptedProvider(),
                        agents={"wordcount": module.WordCountAgent})
    report = await orch.run([TaskSpec(id="a", agent="wordcount", prompt="a b c")])
    assert report.outcomes["a"].status == "completed"
    assert orch.handles["a"].result["words"] == 3


async def test_r7_4_policy_guide_example_named_in_config(
    examples_path: Path, tmp_path: Path,
) -> None:
    """R7.4 (docs/guide-policy.md): the example alert policy, named by import string in
    config, is resolved at start-up and its extra checkpoint fires at the 70 % warning."""
    pytest.importorskip("policies.alerts", reason="the alert policy protocol (issue 5) "
                        "has not landed on this branch yet")
    from scheduler.config import load_policies

    policy_mod = importlib.import_module("early_checkpoint_policy")
    config = VibeConfig.model_validate({
        "state_dir": str(tmp_path), "store": "memory", "session_id": "s1",
        "policies": {"alerts": "early_checkpoint_policy:EarlyCheckpointPolicy"},
        "budgets": {"session": {"tokens": 2000}},
    })
    assert isinstance(load_policies(config).alerts, policy_mod.EarlyCheckpointPolicy)
    from agents.builtin import QuestionAnswerAgent

    orch = Orchestrator(config, provider=ScriptedProvider(), agents={"qa": QuestionAnswerAgent})
    specs = [TaskSpec(id=f"q{i}", agent="qa", prompt="What is this?",
                      params={"max_tokens": 50}) for i in range(10)]
    report = await orch.run(specs)
    assert all(o.status == "completed" for o in report.outcomes.values())
    names = [e.name for e in orch.bus.history]
    assert names.count("budget_warning") == 1 and "budget_critical" not in names
    early = [e for e in orch.bus.history if e.name == "checkpoint_requested"]
    assert len(early) == 1 and "early checkpoint at 70 %" in early[0].message


def test_policy_example_is_pure(examples_path: Path) -> None:
    """The example policy is plain data in, decision out (no loop, no clock)."""
    pytest.importorskip("policies.alerts", reason="issue 5 not landed on this branch yet")
    mod = importlib.import_module("early_checkpoint_policy")
    alerts: Any = importlib.import_module("policies.alerts")
    policy = mod.EarlyCheckpointPolicy(mod.EarlyCheckpointParams(dimensions=("tokens",)))
    assert isinstance(policy, alerts.AlertPolicy)
    warn = alerts.AlertInput("t1", "task:t1", "tokens", "warning", 7000, 10000, 0.7)
    kinds = [a.kind for a in policy.actions(warn)]
    assert kinds[-1] == alerts.ActionKind.CHECKPOINT
    cost = alerts.AlertInput("t1", "task:t1", "cost_usd", "warning", 0.7, 1.0, 0.7)
    assert alerts.ActionKind.CHECKPOINT not in [a.kind for a in policy.actions(cost)]


def _shown_output(page: Path, section: str) -> list[str]:
    """The table rows (``│ …``) and the ``session tokens`` bar line a page's section shows as
    program output, stripped of trailing blanks."""
    text = page.read_text(encoding="utf-8").split(section, 1)[1].split("\n## ", 1)[0]
    return [line.rstrip() for line in text.splitlines()
            if line.startswith(("│ ", "session tokens"))]


@pytest.mark.slow
def test_tutorial_config_runs_from_the_command_line(tmp_path: Path) -> None:
    """docs/tutorial.md: `vibe-engine run docs/examples/tutorial.toml`, then status and report;
    the task rows and the budget bar the tutorial shows are what they print (the simulated
    provider is deterministic), so its figures cannot go stale."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("ANTHROPIC_API_KEY", None)
    run = subprocess.run([str(BIN), "run", str(EXAMPLES / "tutorial.toml"), "--no-live",
                          "--log-level", "warning"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert "fix-pagination" in run.stdout and "docs-after-fix" in run.stdout
    shown = _shown_output(DOCS / "tutorial.md", "## 5. Run it")
    printed = {line.rstrip() for line in run.stdout.splitlines()}
    rows = [line for line in shown if line.startswith("│ ")]
    assert len(rows) == 3 and [r for r in rows if r not in printed] == [], run.stdout
    state = tmp_path / ".vibe-engine-tutorial"
    bars = subprocess.run([str(BIN), "status", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert bars.returncode == 0, bars.stderr
    bar = [line for line in shown if line.startswith("session tokens")]
    assert len(bar) == 1 and bar[0] in {line.rstrip() for line in bars.stdout.splitlines()}, (
        bars.stdout)
    status = subprocess.run([str(BIN), "status", "--state-dir", str(state), "--json"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert status.returncode == 0, status.stderr
    assert '"completed": 3' in status.stdout and '"source": "store"' in status.stdout
    report = subprocess.run([str(BIN), "report", "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert report.returncode == 0 and "per agent" in report.stdout


def _toml_blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [part.split("```", 1)[0] for part in text.split("```toml\n")[1:]]


_PAGES = sorted([ROOT / "README.md", *DOCS.glob("*.md")])


@pytest.mark.parametrize("page", _PAGES, ids=lambda p: p.name)
def test_docs_toml_blocks_are_configs_the_loader_takes(page: Path) -> None:
    """Every ```toml block of the README and docs/ parses, and is a config (or a part of
    one) the configuration model takes, so a renamed field or a bad default in a page
    fails here; a pyproject.toml fragment (``[project.entry-points…]``) is left out."""
    for block in _toml_blocks(page):
        data = tomllib.loads(block)
        if "project" not in data:
            VibeConfig.model_validate(data)


def test_tutorial_block_is_the_example_file() -> None:
    """docs/tutorial.md says its config "is examples/tutorial.toml", which the test suite
    runs: the two hold the same settings."""
    shown = _toml_blocks(DOCS / "tutorial.md")
    assert len(shown) == 1
    example = (EXAMPLES / "tutorial.toml").read_text(encoding="utf-8")
    assert tomllib.loads(shown[0]) == tomllib.loads(example)


def test_configuration_reference_is_up_to_date() -> None:
    """docs/configuration.md is generated from the pydantic models; regenerate it if this fails
    (python docs/gen_config_reference.py)."""
    out = subprocess.run([sys.executable, str(DOCS / "gen_config_reference.py"), "--check"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr + out.stdout


def _tree_modules(page: Path) -> dict[str, set[str]]:
    """The private modules the page's ``scheduler/`` tree lists under each subpackage."""
    tree = page.read_text(encoding="utf-8").split("```\nscheduler/", 1)[1].split("```", 1)[0]
    listed: dict[str, set[str]] = {}
    package = ""
    for line in tree.splitlines()[1:]:
        head, _, names = line.partition("/ ") if "── " in line else ("", "", line)
        if head:
            package = head.split("── ")[1]
        if package:
            listed.setdefault(package, set()).update(
                n for n in names.split() if n.startswith("_"))
    return listed


def test_r7_6_architecture_tree_lists_every_module() -> None:
    """R7.6 (docs/architecture.md): the tree names each subpackage's modules, no more and
    no fewer, so a new or moved module shows up on the page a reader maps the code with."""
    listed = _tree_modules(DOCS / "architecture.md")
    actual = {p.name: {m.stem for m in p.glob("_*.py") if m.stem != "__init__"}
              for p in (ROOT / "scheduler").iterdir()
              if (p / "__init__.py").exists()}
    wrong = {pkg: {"not listed": sorted(actual.get(pkg, set()) - listed.get(pkg, set())),
                   "gone": sorted(listed.get(pkg, set()) - actual.get(pkg, set()))}
             for pkg in sorted(set(listed) | set(actual))
             if listed.get(pkg) != actual.get(pkg)}
    assert wrong == {}, f"update the tree in docs/architecture.md: {wrong}"


@pytest.mark.slow
def test_r3_4_alerts_three_terminals_show_what_the_commands_print(tmp_path: Path) -> None:
    """R3.4 (docs/alerts.md, "Three terminals"): with the page's ``tasks.toml`` the task
    pauses, and the ``status`` rows and the ``review`` the page shows are what the
    commands print (the simulated provider is deterministic); ``finish`` then ends it."""
    section = (DOCS / "alerts.md").read_text(encoding="utf-8").split("### Three terminals")[1]
    config = section.split("```toml\n", 1)[1].split("```", 1)[0]
    shown = section.split("```console\n", 1)[1].split("```", 1)[0].splitlines()
    (tmp_path / "tasks.toml").write_text(config, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    state = ["--state-dir", ".vibe-engine"]
    proc = subprocess.Popen([str(BIN), "run", "tasks.toml", *state, "--no-live"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def cli(*args: str) -> str:
        done = subprocess.run([str(BIN), *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env=env)
        return done.stdout if done.returncode == 0 else ""

    try:
        review = ""
        for _ in range(300):  # the pause comes within seconds; each try waits 0.2 s
            review = cli("decide", "fix-login", "review", *state)
            if review:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
            assert proc.poll() is None, "the run ended before fix-login paused"
        status = cli("status", *state)
        finish = cli("decide", "fix-login", "finish", *state)
        assert proc.wait(timeout=60) == 1  # stopped on its budget
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = [line for line in shown if line.startswith("│ fix-login")]
    printed = {line.rstrip() for line in status.splitlines()}
    assert len(rows) == 2 and [r for r in rows if r not in printed] == [], status
    start = next(i for i, line in enumerate(shown) if line.startswith("Task fix-login"))
    answer = shown[start:start + 8]
    assert review.splitlines()[1:8] == answer[1:], review  # the session id differs
    assert finish.startswith("finish for fix-login: sent to the running orchestrator")
