"""#23: ``vibe-engine status`` shows the session and day budget bars, live and offline, and
``status --json`` has one schema (R7.2 command line, R1.2 scopes, R3.1 levels, R3.4 the
answer to a pause)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from io import StringIO
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from scheduler import TaskSpec
from scheduler.cli._status import gather_status, print_status
from scheduler.observe import BudgetBar, EventView, ModelView, PoolView, TaskView
from scheduler.observe._observers import status_path
from scheduler.observe._schema import (
    BudgetDoc,
    EventDoc,
    ModelDoc,
    PoolDoc,
    StatusDoc,
    TaskBudgetDoc,
    TaskDoc,
)
from scheduler.observe._snapshot import Snapshot
from scheduler.testing import FRIDAY, run_virtual
from tests._helpers import OrchestratorFactory
from tests._observe_helpers import demo_orchestrator

CLI = str(Path(sys.executable).parent / "vibe-engine")
ROWS: dict[str, Any] = {"tasks": TaskDoc, "budgets": BudgetDoc, "pools": PoolDoc,
                        "models": ModelDoc, "events": EventDoc, "task_budgets": TaskBudgetDoc}


def _status(state: Path, *args: str) -> str:
    proc = subprocess.run([CLI, "status", "--state-dir", str(state), *args],
                          capture_output=True, text=True, check=False, timeout=60,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _check_schema(doc: dict[str, Any]) -> None:
    assert set(doc) == StatusDoc.__required_keys__
    for key, kind in ROWS.items():
        for row in doc[key]:
            assert set(row) == kind.__required_keys__, (key, set(row) ^ kind.__required_keys__)


def test_r7_2_status_documents_match_the_snapshot_dataclasses() -> None:
    """#23: the typed JSON rows carry exactly the dataclasses' fields (no drift)."""
    for view, doc in ((TaskView, TaskDoc), (BudgetBar, BudgetDoc), (PoolView, PoolDoc),
                      (ModelView, ModelDoc), (EventView, EventDoc)):
        assert {f.name for f in fields(view)} == doc.__required_keys__, view
    assert set(Snapshot("s", 0.0).to_dict()) | {"task_budgets"} == StatusDoc.__required_keys__


@pytest.mark.slow
def test_r7_2_status_json_has_one_schema_with_session_and_day_bars(tmp_path: Path) -> None:
    """#23, R1.2: ``status --json`` from the store and from a running orchestrator's
    status.json has the same keys, the session and day bars stay in ``budgets`` and each
    task's own rows are ``task_budgets``; the text view shows the bars too."""
    orch = demo_orchestrator(tmp_path, tasks=3, time_scale=0.01)
    run_virtual(orch.run)
    state = orch.config.state_dir
    stored = json.loads(_status(state, "--json"))
    # the orchestrator's own status.json, as if it still ran (our pid is alive)
    data = json.loads(status_path(state).read_text())
    status_path(state).write_text(json.dumps({**data, "running": True, "pid": os.getpid()}))
    live = json.loads(_status(state, "--json"))
    assert (stored["source"], live["source"]) == ("store", "orchestrator")
    for doc in (stored, live):
        _check_schema(doc)
        scopes = {b["scope"].split(":")[0] for b in doc["budgets"]}
        assert {"session", "day"} <= scopes, doc["budgets"]
        assert {r["task_id"] for r in doc["task_budgets"]} == {"t01", "t02", "t03"}
    session = [b for b in stored["budgets"] if b["scope"] == f"session:{orch.session_id}"
               and b["dimension"] == "tokens"]
    assert session and session[0]["used"] == stored["totals"]["tokens"] > 0
    text = _status(state)
    assert "Budgets" in text and "session tokens" in text and "day cost" in text
    assert "Task budgets" in text


async def _until_paused(orch: Any) -> None:
    paused = anyio.Event()
    orch.bus.subscribe(lambda e: paused.set() if e.name == "task_paused" else None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(orch.run)
        await paused.wait()
        tg.cancel_scope.cancel()


def test_r3_4_status_from_the_store_shows_the_pause_and_its_answer(tmp_path: Path) -> None:
    """R3.4, #23: after a run stopped while a task waited for a decision, ``status`` (no
    orchestrator running) shows the task paused with the command that answers it, in 80
    columns with the session and day bars."""
    orch = demo_orchestrator(tmp_path, tasks=2, staged=True, time_scale=0.05)
    run_virtual(_until_paused, orch)
    state = orch.config.state_dir

    async def gather() -> StatusDoc:
        return await gather_status(state, "sqlite", today=FRIDAY)

    doc = run_virtual(gather)
    paused = [t for t in doc["tasks"] if t["status"] == "paused"]
    assert [t["task_id"] for t in paused] == ["t04"]
    assert paused[0]["answer"] == (
        f"vibe-engine decide --state-dir {state} t04 add --tokens 5000 | finish | review")
    assert any(r["paused"] for r in doc["task_budgets"] if r["task_id"] == "t04")
    console = Console(width=80, file=StringIO(), record=True)
    print_status(doc, console)
    text = console.export_text()
    assert "t04" in text and "paused" in text and "session tokens" in text and "day cost" in text
    assert paused[0]["answer"].split(" | ")[0].split()[-1] in text  # the amount, whole
    assert "↳ vibe-engine decide" in text
    assert all(len(line) <= 80 for line in text.splitlines() if "│" not in line)


class _Quick:
    async def run(self, ctx: Any) -> str:
        return "ok"


async def test_r2_6_status_json_rows_are_made_as_they_are_written(
    make_orchestrator: OrchestratorFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R2.6: ``status.json`` holds what the run's snapshot holds, and its task rows are
    made a few at a time as they are written: a run of thousands of waiting agents does
    not hold a row object for each at once."""
    import scheduler.observe._view as view_mod

    orch = make_orchestrator({"q": _Quick})
    await orch.run([TaskSpec(id=f"t{i}", agent="q") for i in range(100)])
    made: list[str] = []
    task_doc = view_mod._task_doc

    def counted(*args: Any) -> dict[str, Any]:
        made.append(args[1].id)
        return task_doc(*args)

    monkeypatch.setattr(view_mod, "_task_doc", counted)

    class Out(StringIO):
        rows_made_at_writes: list[int] = []

        def write(self, s: str) -> int:
            self.rows_made_at_writes.append(len(made))
            return super().write(s)

    out = Out()
    view_mod.write_status(orch.view, out, now=1.0, running=False)
    assert len(made) == 100  # each row made once, from its task
    assert max(b - a for a, b in zip(Out.rows_made_at_writes, Out.rows_made_at_writes[1:],
                                     strict=False)) <= 32
    written = json.loads(out.getvalue())
    expected = json.loads(json.dumps(
        view_mod.snapshot_of(orch.view, now=1.0, running=False).to_dict(), default=str))
    assert {**written, "written_at": ""} == {**expected, "written_at": ""}
    assert written["counts"] == {"completed": 100} and len(written["tasks"]) == 100
