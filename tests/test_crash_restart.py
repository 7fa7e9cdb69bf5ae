"""What a crash leaves behind must not stop the commands people run next (R2.6, R1.5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scheduler.testing import run_virtual
from tests._cli_helpers import cli
from tests._observe_helpers import demo_orchestrator

#: What a file may hold after a crash of the machine or a bad edit.
DAMAGED = ("", '{"task_id": "t01", "sess', "7", "[1, 2]", "null", '{"budget": 5}')


def _rows(status: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    return [(t["task_id"], t["status"], t["tokens"], t["calls"]) for t in status["tasks"]]


def test_r2_6_a_damaged_usage_json_does_not_stop_status_report_or_decide(
        tmp_path: Path) -> None:
    """R2.6: ``usage.json`` is a readable copy of what the store holds; one damaged by a
    crash of the machine (truncated, or any JSON value but an object) is skipped: offline
    ``status`` (text and JSON), ``report`` and ``decide`` answer from the store, exit 0
    for the commands that only read, and the task's usage is still the store's."""
    orch = demo_orchestrator(tmp_path, tasks=2, time_scale=0.01)
    run_virtual(orch.run)
    state = orch.config.state_dir
    before = json.loads(cli(["status", "--json", "--state-dir", str(state)], tmp_path).stdout)
    for damaged in DAMAGED:
        (state / "tasks" / "t01" / "usage.json").write_text(damaged)
        for argv in (["status"], ["report", "--json"], ["report"]):
            out = cli([*argv, "--state-dir", str(state)], tmp_path)
            assert out.code == 0 and "Traceback" not in out.stderr, (damaged, argv, out)
        out = cli(["status", "--json", "--state-dir", str(state)], tmp_path)
        assert out.code == 0, (damaged, out)
        assert _rows(json.loads(out.stdout)) == _rows(before)  # the store's usage
        refused = cli(["decide", "t01", "finish", "--state-dir", str(state)], tmp_path)
        assert "Traceback" not in refused.stderr and "not paused" in refused.stderr
