"""R7.1, R1.1, R5.7: ``vibe-engine run`` ends though a plugin agent swallows every
cancellation.

A plugin agent (a real entry point) that catches ``BaseException`` around its awaits and
goes on kept the process running for ever once its task's time budget ran out or the
user pressed Ctrl-C: the run waited for the agent's task, and ``asyncio.run`` waited
for it again as it closed.  Now the run gives up on it after the grace period with one
warning line naming the task, and exits with the code the outcomes give.  The subprocess
timeout only stands for "hung": nothing here measures how long the run took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import yaml

VIBE = [str(Path(sys.executable).with_name("vibe-engine"))]  # the installed CLI
ROOT = Path(__file__).resolve().parent.parent
HUNG_S = 90

_PLUGIN = '''
import pathlib
import anyio

class Rogue:
    async def run(self, ctx):
        pathlib.Path(ctx.task.params["marker"]).write_text("started")
        while True:
            try:
                await anyio.sleep(1)
            except BaseException:
                pass
'''


def _install(site: Path) -> None:
    dist = site / "rogue_agents-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rogue-agents\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[vibe_engine.agents]\nrogue = rogue_agents_mod:Rogue\n")
    (site / "rogue_agents_mod.py").write_text(_PLUGIN)


def _start(tmp_path: Path, budget: dict[str, float] | None) -> subprocess.Popen[str]:
    site = tmp_path / "site"
    _install(site)
    rogue = {"id": "r", "agent": "rogue", "prompt": "x",
             "params": {"marker": str(tmp_path / "started")}}
    if budget:
        rogue["budget"] = budget
    cfg = {"state_dir": str(tmp_path / "st"), "store": "sqlite",
           "provider": {"simulated": {"time_scale": 0.01}},
           "tasks": [rogue, {"id": "q", "agent": "qa", "prompt": "What is a lease?"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.Popen([*VIBE, "run", "run.yaml", "--no-live", "--log-level", "warning"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


async def _started(marker: Path, proc: subprocess.Popen[str]) -> None:
    with anyio.fail_after(HUNG_S):
        while not await anyio.Path(marker).exists():
            assert proc.poll() is None, proc.stderr
            await anyio.sleep(0.05)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "agent_ignored_cancellation" in line]


@pytest.mark.slow
def test_r1_1_run_ends_when_an_agent_past_its_time_budget_swallows_the_cancellation(
        tmp_path: Path) -> None:
    """R1.1: the rogue's 1 s budget runs out; the run ends (before: never), exit 1, the
    task failed naming its time budget, one warning line naming it."""
    proc = _start(tmp_path, {"time_s": 1})
    try:
        out, err = proc.communicate(timeout=HUNG_S)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    (line,) = _warnings(err)
    assert '"task_id": "r"' in line
    table = " ".join(out.split())
    assert "wall-time budget spent" in table and "completed" in table


@pytest.mark.slow
def test_r7_1_ctrl_c_ends_a_run_whose_agent_swallows_the_cancellation(tmp_path: Path) -> None:
    """R7.1: Ctrl-C while the rogue runs: the process ends (before: never) with 130, the
    rogue's task recorded interrupted (resumable), one warning line naming it."""
    proc = _start(tmp_path, None)
    try:
        anyio.run(_started, tmp_path / "started", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=HUNG_S)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    (line,) = _warnings(err)
    assert '"task_id": "r"' in line and "interrupted" in line


@pytest.mark.slow
def test_r7_2_sigterm_ends_the_run_as_ctrl_c_does(tmp_path: Path) -> None:
    """R7.2: SIGTERM (a service manager stopping the orchestrator) while the rogue runs:
    the run is cancelled as by Ctrl-C -- the task recorded interrupted, one warning line
    for the rogue -- and the process exits 143 with one line saying how to resume
    (before: killed at once, nothing recorded)."""
    proc = _start(tmp_path, None)
    try:
        anyio.run(_started, tmp_path / "started", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=HUNG_S)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    (line,) = _warnings(err)
    assert '"task_id": "r"' in line and "interrupted" in line
    assert "terminated (SIGTERM)" in err and "vibe-engine resume" in err
    assert '"event": "task_interrupted"' in err
