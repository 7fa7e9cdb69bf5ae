"""``vibe-engine status`` shows a running orchestrator's own snapshot only while *that*
process runs: ``status.json`` names its host, pid and start, as session records do
(``scheduler.core._process``), so a killed orchestrator whose pid the kernel gave to
another process is not shown as running, and one on another host (a state directory on
a shared disk) is not judged by this host's pids (R7.2, R1.5)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from scheduler.core import process_start, this_host
from scheduler.observe._observers import status_path

CLI = str(Path(sys.executable).parent / "vibe-engine")


def _status(state: Path) -> dict[str, Any]:
    proc = subprocess.run([CLI, "status", "--state-dir", str(state), "--json"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _killed_mid_run(state: Path) -> dict[str, Any]:
    """``vibe-engine demo`` killed (SIGKILL) while it runs: its last ``status.json``."""
    with subprocess.Popen([CLI, "demo", "--state-dir", str(state), "--tasks", "12",
                           "--time-scale", "4", "--no-live", "--log-level", "error"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as run:
        doc: dict[str, Any] = {}
        for _ in range(600):  # up to a minute: the run's wait is the pause between looks
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.wait(timeout=0.1)
                break  # it ended before a look found a task running
            try:
                doc = json.loads(status_path(state).read_text())
            except (OSError, ValueError):
                doc = {}
            if any(t["status"] == "running" for t in doc.get("tasks", ())):
                break
        assert doc.get("running") and doc["pid"] == run.pid, "the demo never ran a task"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    return doc


def _rewrite(state: Path, doc: dict[str, Any], **fields: Any) -> None:
    status_path(state).write_text(json.dumps({**doc, **fields}))


def test_r7_2_status_tells_a_killed_orchestrator_from_the_process_given_its_pid(
    tmp_path: Path,
) -> None:
    """The demo is killed mid-run; its ``status.json`` still says ``running``.  Its pid
    is then another process's (a ``sleep``, as the kernel reuses pids): status showed
    the dead run's snapshot, tasks ``running``, because that pid was alive.  Now it names
    the killed process's host and start, and status rebuilds the view from the store."""
    state = tmp_path / "st"
    doc = _killed_mid_run(state)
    assert doc["host"] == this_host()
    assert doc["proc_start"]  # /proc is there: the start is known
    assert _status(state)["source"] == "store"
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            assert process_start(other.pid) != doc["proc_start"]
            _rewrite(state, doc, pid=other.pid)  # the killed run's pid, given to `sleep`
            shown = _status(state)
            assert (shown["source"], shown["running"]) == ("store", False)
            assert not [t for t in shown["tasks"] if t["status"] == "running"]
            # a status.json of an older release names no host: its pid is all there is
            legacy = {k: v for k, v in doc.items() if k not in ("host", "proc_start")}
            status_path(state).write_text(json.dumps({**legacy, "pid": other.pid}))
            assert _status(state)["source"] == "orchestrator"
        finally:
            other.kill()


def test_r7_2_status_does_not_judge_another_hosts_orchestrator_by_local_pids(
    tmp_path: Path,
) -> None:
    """A ``status.json`` written by an orchestrator on another host (a shared state
    directory) whose pid runs nothing here: status showed the store's view, as if it had
    died; its snapshot is shown, running (this host cannot tell whether it runs)."""
    state = tmp_path / "st"
    doc = _killed_mid_run(state)
    _rewrite(state, doc, host=f"not-{this_host()}")
    shown = _status(state)
    assert (shown["source"], shown["running"]) == ("orchestrator", True)
    assert shown["host"] == f"not-{this_host()}"
    # the orchestrator still running here, with its own start: shown (as before)
    _rewrite(state, doc, pid=os.getpid(), proc_start=process_start(os.getpid()))
    assert _status(state)["source"] == "orchestrator"
