"""The command line (R7.2) and clear errors for bad config."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "vibe-engine"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
def test_r7_2_demo_runs_from_the_command_line(tmp_path: Path) -> None:
    """R7.2: the orchestrator is launched from the CLI; the demo needs no key or network."""
    env_key = os.environ.pop("ANTHROPIC_API_KEY", None)
    try:
        out = _run("demo", "--tasks", "8", "--time-scale", "0.01", "--state-dir", "st",
                   cwd=tmp_path)
    finally:
        if env_key is not None:
            os.environ["ANTHROPIC_API_KEY"] = env_key
    assert out.returncode == 0, out.stderr
    assert "Tasks" in out.stdout and "Models" in out.stdout and "total" in out.stdout
    assert (tmp_path / "st" / "vibe.db").exists()
    # 8 tasks plus the two staged ones (deferred during the opus outage, paused at 100 %)
    assert len(list((tmp_path / "st" / "tasks").glob("*/usage.json"))) == 10

    status = _run("status", "--state-dir", "st", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert '"t01"' in status.stdout


def test_bad_config_one_clear_line_and_nothing_written(tmp_path: Path) -> None:
    """A bad config names the field and value in one line; no state is written."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('state_dir = "st"\n[budgets.session]\ntokens = -5\n')
    out = _run("run", str(cfg), cwd=tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "budgets.session.tokens" in lines[0] and "-5" in lines[0]
    assert not (tmp_path / "st").exists()

    cfg.write_text("[budgets\n")
    out = _run("run", str(cfg), cwd=tmp_path)
    assert out.returncode == 2 and "malformed TOML" in out.stderr


def test_r5_7_unknown_victim_policy_one_line_and_nothing_written(tmp_path: Path) -> None:
    """R5.7/R7.4: a victim policy that does not exist stops ``run`` before anything starts."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('state_dir = "st"\n[policies]\nvictim = "no_such_module:Victim"\n')
    out = _run("run", str(cfg), "--no-live", cwd=tmp_path)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "policies.victim" in lines[0] and "no_such_module:Victim" in lines[0]
    assert not (tmp_path / "st").exists()


def test_plugins_command_lists_agents(tmp_path: Path) -> None:
    out = _run("plugins", cwd=tmp_path)
    assert out.returncode == 0
    assert "coder" in out.stdout and "vibe-engine" in out.stdout


def test_r7_2_run_keeps_its_start_up_heap_out_of_the_collectors_way(tmp_path: Path) -> None:
    """R7.2: ``vibe-engine run`` freezes what start-up built (modules, config, catalog,
    the orchestrator's parts) into the collector's permanent generation before its loop
    starts, so full collections during the run do not scan it again, and collects less
    often than a script would."""
    from scheduler import VibeConfig
    from scheduler.cli._app import _run
    from scheduler.cli._heap import THRESHOLDS

    config = VibeConfig.model_validate({
        "state_dir": str(tmp_path / "state"),
        "tasks": [{"id": "t1", "agent": "qa", "prompt": "What does the allocator do?"}]})
    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        report = _run(config, live=False)
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == THRESHOLDS
    finally:
        gc.unfreeze()  # this test process goes on collecting as before
        gc.set_threshold(*thresholds)
    assert report.outcomes["t1"].status == "completed"
