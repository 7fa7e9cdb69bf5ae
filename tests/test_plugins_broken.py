"""A broken agent plugin installed beside vibe-engine (R7.3): it does not stop ``run`` or
``demo``; ``plugins`` lists it as broken with the reason; a task using it fails with it.

The plugins are real entry points: a ``*.dist-info`` folder on ``PYTHONPATH`` that
``importlib.metadata`` finds like any installed distribution.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

VIBE = [str(Path(sys.executable).with_name("vibe-engine"))]  # the installed CLI
ROOT = Path(__file__).resolve().parent.parent


def _install_broken_plugins(site: Path) -> None:
    dist = site / "broken_agents-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-agents\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[vibe_engine.agents]\n"
        "ghost = no_such_module_for_vibe:Agent\n"  # fails to import
        "syncrun = broken_agents_mod:SyncAgent\n"  # loads, fails the protocol check
    )
    (site / "broken_agents_mod.py").write_text(
        "class SyncAgent:\n    def run(self, ctx):\n        return None\n")


def _cli(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([*VIBE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_r7_3_broken_plugin_listed_and_fails_only_its_tasks(tmp_path: Path) -> None:
    """R7.3: with two broken plugins installed, ``run`` completes the task that uses a
    good agent and fails the one naming a broken agent with the reason; ``plugins``
    lists both as broken with their reasons; ``demo`` runs."""
    site = tmp_path / "site"
    _install_broken_plugins(site)
    cfg = {"state_dir": str(tmp_path / "st"), "store": "sqlite",
           "provider": {"simulated": {"time_scale": 0.01}},
           "tasks": [{"id": "good", "agent": "qa", "prompt": "What is a lease?"},
                     {"id": "bad", "agent": "ghost", "prompt": "What is a lease?"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))

    run = _cli(site, tmp_path, "run", "run.yaml", "--no-live", "--log-level", "warning")
    assert run.returncode == 1, run.stderr  # the run completes; exit 1: a task failed
    out = " ".join(run.stdout.split())
    assert "good" in out and "completed" in out
    assert "failed: cannot load 'ghost'" in out
    assert "agent_plugin_broken" in run.stderr and "no_such_module_for_vibe" in run.stderr

    listing = _cli(site, tmp_path, "plugins")
    assert listing.returncode == 0, listing.stderr
    text = " ".join(listing.stdout.split())
    assert "ghost" in text and "syncrun" in text and "broken-agents" in text
    assert "No module named 'no_such_module_for_vibe'" in text
    assert "run(ctx) must be 'async def'" in text
    assert text.count("broken:") == 2 and "ok" in text  # the built-in agents load

    demo = _cli(site, tmp_path, "demo", "--tasks", "4", "--time-scale", "0.01",
                "--state-dir", "demo", "--no-live", "--no-staged")
    assert demo.returncode == 0, demo.stderr
