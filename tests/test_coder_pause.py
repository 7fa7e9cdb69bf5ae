"""A paused, then resumed, ``coder`` continues its conversation from its checkpoint
without repeating tool calls already executed (acceptance of issue #20; R3.4, R1.5).

The coder works through the real ``anthropic`` SDK against the scripted fake API
(list, read, edit, run the tests, summary).  Its task budget is tight: the first
three calls fit, the fourth does not, so the task pauses (R3.4) after the edit ran
and before the test command.  The test script appends a line to ``runs.log`` in
the repository each time it runs: a side effect that counts executions.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.builtin import CoderAgent
from agents.fake_api import FakeAnthropicServer, open_fake_api
from agents.providers import AnthropicProvider
from scheduler import VibeConfig
from scheduler.config import ProviderConfig
from scheduler.runtime import RunReport
from scheduler.testing import build_orchestrator
from tests._anthropic_helpers import SECRET_KEY
from tests.test_coder_agent import SCRIPT, TEST_CMD

# a real HTTP fake API and real processes: real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
BIN = str(Path(sys.executable).parent / "vibe-engine")
#: Calls report about 1,800-1,950 tokens each and reserve their estimate plus
#: ``max_tokens`` (500): call 3 needs about 6,000 in all, call 4 about 7,900.
BUDGET, MAX_TOKENS = 7_000, 500


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "test_calc.py").write_text(
        "with open('runs.log', 'a') as log:\n    log.write('run\\n')\n"
        "from calc import add\n\nassert add(2, 3) == 5, add(2, 3)\nprint('1 passed')\n")
    return root


def _task(repo: Path) -> dict[str, Any]:
    return {"id": "c1", "agent": "coder", "prompt": "Make the failing test pass.",
            "budget": {"tokens": BUDGET},
            "params": {"repo": str(repo), "model": "sonnet", "max_tokens": MAX_TOKENS}}


def _runs(repo: Path) -> int:
    log = repo / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _assert_paused_after_the_edit(api: FakeAnthropicServer, repo: Path) -> None:
    assert api.requests == 3  # list, read, edit answered; the 4th call is not admitted
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert _runs(repo) == 0  # the test command has not run yet


def _assert_continued_once(api: FakeAnthropicServer, repo: Path, result: dict[str, Any]) -> None:
    """The continued request carries the whole earlier conversation; every tool ran once."""
    sent = api.scripted_requests
    assert len(sent) == 5 and api.script_left == 0  # no model turn asked twice
    before, continued = sent[2]["messages"], sent[3]["messages"]
    assert len(before) == 5 and len(continued) == 7
    assert continued[:5] == before  # the same conversation, thinking block included
    assert continued[5] == {"role": "assistant", "content": SCRIPT[2]["content"]}
    edit_result = continued[6]["content"]
    assert [r["tool_use_id"] for r in edit_result] == ["toolu_03"]
    assert not edit_result[0].get("is_error")
    assert [m["content"][0]["tool_use_id"] for m in sent[4]["messages"][2::2]] == [
        "toolu_01", "toolu_02", "toolu_03", "toolu_04"]
    assert _runs(repo) == 1  # the test command ran exactly once
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert result["files_changed"] == ["calc.py"]
    assert result["commands"] == [{"command": TEST_CMD, "returncode": 0}]
    assert (result["turns"], result["tool_calls"], result["stop_reason"]) == (5, 4, "end_turn")


async def test_r3_4_paused_coder_continues_its_conversation_after_add_budget(
    tmp_path: Path,
) -> None:
    """R3.4, in one process: the coder pauses in its tool loop after the edit ran; the
    ``add`` decision lets the same conversation continue; no tool call is repeated."""
    repo = make_repo(tmp_path / "repo")
    with open_fake_api(api_key=SECRET_KEY, script=SCRIPT) as api:
        config = VibeConfig.model_validate({
            "state_dir": tmp_path / "st", "store": "sqlite", "session_id": "s1",
            "provider": {"kind": "anthropic", "base_url": api.base_url},
            "tasks": [_task(repo)]})
        provider = AnthropicProvider(ProviderConfig(kind="anthropic", base_url=api.base_url),
                                     api_key=SECRET_KEY)
        orch = build_orchestrator({"coder": CoderAgent}, config=config, provider=provider)
        report: list[RunReport] = []
        paused = anyio.Event()
        orch.bus.subscribe(lambda e: paused.set() if e.name == "task_paused" else None)
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                report.append(await orch.run())

            tg.start_soon(run)
            with anyio.fail_after(60):
                await paused.wait()
            _assert_paused_after_the_edit(api, repo)
            event = next(e for e in orch.bus.history if e.name == "task_paused")
            usage = event.data["usage"]
            assert (usage["calls"], usage["file_edits"], usage["shell_commands"]) == (3, 1, 0)
            await orch.decide("c1", "add_budget", tokens=50_000)
        outcome = report[0].outcomes["c1"]
        assert outcome.status == "completed", outcome.reason
        result = orch.handles["c1"].result
        _assert_continued_once(api, repo, result)
    assert result["resumed"] is False  # the same attempt carried on
    u = outcome.usage
    assert (u.calls, u.file_edits, u.shell_commands) == (5, 1, 1)
    assert orch.tracker.task_scope("c1").limits.tokens == BUDGET + 50_000


# -- across processes ---------------------------------------------------------------------

ENV = {**{k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"},
       "COLUMNS": "200", "VIBE_CODER_TEST_KEY": SECRET_KEY}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120, env=ENV)


def _status(state: Path) -> dict[str, Any]:
    out = _cli("status", "--json", "--state-dir", str(state))
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _task_row(status: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {t["task_id"]: t for t in status["tasks"]}
    return rows.get("c1", {})


def _paused_in_store(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT value FROM state WHERE kind = 'pause'").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return False
    return any(json.loads(v).get("state") == "paused" for (v,) in rows)


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[str],
          timeout_s: float = 60) -> None:
    """Poll ``ready`` while ``proc`` runs (its ``wait`` is the pause between polls)."""
    for _ in range(int(timeout_s / 0.2)):
        if ready():
            return
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"process ended ({proc.returncode}) before {what}: "
                             f"{proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError(f"timed out waiting for {what}")


def _operations(db: Path) -> tuple[int, int, int]:
    """Model calls, file edits and shell commands the store recorded for the task."""
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT SUM(model != ''), SUM(file_edits), SUM(shell_commands) "
                           "FROM events WHERE task_id = 'c1'").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


@pytest.mark.slow
def test_r3_4_coder_paused_killed_resumed_then_added_budget_continues_from_checkpoint(
    tmp_path: Path,
) -> None:
    """R3.4 + R1.5 across processes: ``vibe-engine run`` pauses the coder after its edit
    and is SIGKILLed while paused; ``vibe-engine resume`` keeps it paused until
    ``vibe-engine decide c1 add --tokens``; the coder continues its checkpointed
    conversation: the server sees the whole earlier conversation, no model turn is asked
    again, and the edit and the test command each ran exactly once in all."""
    repo = make_repo(tmp_path / "repo")
    state = tmp_path / "st"
    db = state / "vibe.db"
    with open_fake_api(api_key=SECRET_KEY, script=SCRIPT) as api:
        cfg = tmp_path / "vibe.toml"
        task = _task(repo)
        cfg.write_text(
            f'state_dir = "{state}"\nstore = "sqlite"\n[provider]\nkind = "anthropic"\n'
            f'base_url = "{api.base_url}"\napi_key_env = "VIBE_CODER_TEST_KEY"\n'
            f'[[tasks]]\nid = "c1"\nagent = "coder"\nprompt = "{task["prompt"]}"\n'
            f'budget = {{ tokens = {BUDGET} }}\n'
            f'params = {{ repo = "{repo}", model = "sonnet", max_tokens = {MAX_TOKENS} }}\n')
        first = subprocess.Popen([BIN, "run", str(cfg), "--no-live", "--log-level", "warning"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env=ENV)
        try:
            _wait("the coder to pause", lambda: _paused_in_store(db), first)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            assert first.stderr is not None
            first.stderr.close()
        _assert_paused_after_the_edit(api, repo)
        assert _task_row(_status(state))["status"] == "paused"
        assert _operations(db) == (3, 1, 0)

        resumed = subprocess.Popen([BIN, "resume", "--state-dir", str(state), "--no-live",
                                    "--log-level", "warning"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            def paused_again() -> bool:
                live = _status(state)
                return live["source"] == "orchestrator" and _task_row(live).get(
                    "status") == "paused"

            _wait("the resumed run to show the coder paused", paused_again, resumed)
            assert api.requests == 3  # still paused: nothing asked of the model meanwhile
            added = _cli("decide", "c1", "add", "--tokens", "50000", "--state-dir", str(state))
            assert added.returncode == 0, added.stderr
            _, err = resumed.communicate(timeout=120)
        finally:
            if resumed.poll() is None:
                resumed.kill()
                resumed.communicate()
        assert resumed.returncode == 0, err
        row = _task_row(_status(state))
        assert row["status"] == "completed"
        _assert_continued_once(api, repo, row["result"])
    assert row["result"]["resumed"] is True  # continued from the checkpoint
    assert _operations(db) == (5, 1, 1)  # every call, edit and command counted once
