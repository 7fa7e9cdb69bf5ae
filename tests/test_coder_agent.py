"""The built-in ``coder`` does real work: the real SDK, real HTTP, a scripted fake API.

A small repository with a failing test; the fake API replays a script of
Messages API answers (list, read, edit, run the tests, summary), and the coder
executes each tool call through governed operations.  Usage charged equals
what the server reported; every edit and command is counted (R1.1, R2.1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.builtin import CoderAgent
from agents.fake_api import open_fake_api
from agents.providers import AnthropicProvider
from scheduler import VibeConfig
from scheduler.config import ProviderConfig
from scheduler.testing import build_orchestrator
from tests._anthropic_helpers import SECRET_KEY

# the fake API is a real HTTP server and the tests run as a real process: real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
BIN = Path(sys.executable).parent / "vibe-engine"
TEST_CMD = f"{sys.executable} test_calc.py"


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "test_calc.py").write_text(
        "from calc import add\n\nassert add(2, 3) == 5, add(2, 3)\nprint('1 passed')\n")
    return root


def _tool(n: int, name: str, **args: Any) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": f"Step {n}."},
                        {"type": "tool_use", "id": f"toolu_{n:02d}", "name": name,
                         "input": args}],
            "stop_reason": "tool_use"}


SCRIPT: list[dict[str, Any]] = [
    {"content": [{"type": "thinking", "thinking": "Look around first.", "signature": "s1"},
                 {"type": "tool_use", "id": "toolu_01", "name": "list_files", "input": {}}],
     "stop_reason": "tool_use"},
    _tool(2, "read_file", path="calc.py"),
    _tool(3, "edit_file", path="calc.py", old_string="return a - b",
          new_string="return a + b"),
    _tool(4, "run_command", command=TEST_CMD),
    {"content": [{"type": "text", "text": "Fixed add(): it subtracted. The test passes."}],
     "stop_reason": "end_turn"},
]


def _config(tmp: Path, base_url: str, repo: Path, store: str = "sqlite",
            session: str = "s1") -> VibeConfig:
    return VibeConfig.model_validate({
        "state_dir": tmp / "st", "store": store, "session_id": session,
        "provider": {"kind": "anthropic", "base_url": base_url},
        "tasks": [{"id": "c1", "agent": "coder", "prompt": "Make the failing test pass.",
                   "params": {"repo": str(repo), "model": "sonnet"}}],
    })


async def _run(config: VibeConfig) -> tuple[Any, Any]:
    provider = AnthropicProvider(ProviderConfig(kind="anthropic",
                                                base_url=config.provider.base_url),
                                 api_key=SECRET_KEY)
    orch = build_orchestrator({"coder": CoderAgent}, config=config, provider=provider)
    report = await orch.run()
    return report.outcomes["c1"], orch.handles["c1"].result


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_coder_fixes_a_failing_test_through_the_real_sdk(
    tmp_path: Path, stream: bool,
) -> None:
    """Acceptance: reads, edits, runs the tests, ends with them passing; every tool call
    counted; the usage charged is exactly what the server reported."""
    repo = make_repo(tmp_path / "repo")
    assert (await anyio.run_process(TEST_CMD.split(), cwd=repo, check=False)).returncode != 0
    with open_fake_api(api_key=SECRET_KEY, script=SCRIPT) as api:
        config = _config(tmp_path, api.base_url, repo)
        if stream:
            task = config.tasks[0].model_copy(
                update={"params": {**config.tasks[0].params, "stream": True}})
            config = config.model_copy(update={"tasks": (task,)})
        outcome, result = await _run(config)
        totals = api.reported_totals()
        assert api.script_left == 0 and api.requests == 5
    assert outcome.status == "completed", outcome.reason
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert (await anyio.run_process(TEST_CMD.split(), cwd=repo, check=False)).returncode == 0
    assert result["files_changed"] == ["calc.py"]
    assert result["commands"] == [{"command": TEST_CMD, "returncode": 0}]
    assert result["final_text"] == "Fixed add(): it subtracted. The test passes."
    assert (result["turns"], result["tool_calls"], result["stop_reason"]) == (5, 4, "end_turn")
    json.dumps(result)  # a JSON-serialisable summary
    u = outcome.usage
    assert (u.calls, u.file_edits, u.shell_commands, u.dangerous_commands) == (5, 1, 1, 1)
    assert u.prompt_tokens == totals["input_tokens"]
    assert u.completion_tokens == totals["output_tokens"]
    assert u.cache_read_tokens == totals["cache_read_input_tokens"]
    assert u.cache_write_tokens == totals["cache_creation_5m"] + totals["cache_creation_1h"]


async def test_coder_continues_its_checkpointed_conversation_without_repeating_tools(
    tmp_path: Path,
) -> None:
    """A failed coder, its session continued (``resume``), continues from its checkpoint:
    the model gets the whole conversation back and no executed tool call runs again."""
    repo = make_repo(tmp_path / "repo")
    with open_fake_api(api_key=SECRET_KEY, script=SCRIPT[:3]) as api:
        # the 4th answer is missing: the API refuses the call and the attempt fails
        first, _ = await _run(_config(tmp_path, api.base_url, repo))
        assert api.requests == 4
    assert first.status == "failed" and "no response left" in first.reason
    assert first.usage.file_edits == 1
    assert "return a + b" in (repo / "calc.py").read_text()
    with open_fake_api(api_key=SECRET_KEY, script=SCRIPT[3:]) as api:
        second, result = await _run(_config(tmp_path, api.base_url, repo))  # session s1
        sent = api.last_request
        assert api.requests == 2
    assert second.status == "completed", second.reason
    assert result["resumed"] is True
    assert sent is not None and len(sent["messages"]) == 9  # the whole conversation
    # the task's totals over both runs: the edit ran once, the command once
    assert (second.usage.file_edits, second.usage.shell_commands) == (1, 1)
    assert result["tool_calls"] == 4 and result["files_changed"] == ["calc.py"]
    assert result["commands"] == [{"command": TEST_CMD, "returncode": 0}]


@pytest.mark.slow
def test_coder_from_the_cli_with_fake_api_script(tmp_path: Path) -> None:
    """``vibe-engine fake-api --script`` + ``vibe-engine run``: the user's path; then
    ``vibe-engine status --json`` shows the coder's result (files changed, commands run,
    final text), kept with the task (acceptance of issue #20)."""
    repo = make_repo(tmp_path / "repo")
    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps(b) + "\n" for b in SCRIPT))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    api = subprocess.Popen([str(BIN), "fake-api", "--port", str(port), "--script", str(script)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env={**os.environ, "COLUMNS": "200"})
    try:
        assert api.stdout is not None
        banner = api.stdout.readline()  # one line through a pipe, however long (R7.2)
        assert "5 scripted responses" in banner and banner.rstrip().endswith("Ctrl-C stops")
        cfg = tmp_path / "vibe.toml"
        cfg.write_text(
            'state_dir = "st"\n[provider]\nkind = "anthropic"\n'
            f'base_url = "http://127.0.0.1:{port}"\napi_key_env = "VIBE_CODER_TEST_KEY"\n'
            '[[tasks]]\nid = "c1"\nagent = "coder"\nprompt = "Make the failing test pass."\n'
            f'params = {{ repo = "{repo}", model = "sonnet" }}\n')
        env = {**os.environ, "COLUMNS": "200", "VIBE_CODER_TEST_KEY": "sk-test"}
        out = subprocess.run([str(BIN), "run", str(cfg)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120, env=env)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_control/reported",
                                    timeout=30) as got:
            reported = json.loads(got.read())
    finally:
        api.terminate()
        api.wait(timeout=10)
        if api.stdout is not None:
            api.stdout.close()
    assert out.returncode == 0, out.stderr
    assert "completed" in out.stdout
    assert "return a + b" in (repo / "calc.py").read_text()
    # acceptance: the result is visible in ``status --json`` (read from the store)
    shown = subprocess.run([str(BIN), "status", "--json", "--state-dir", str(tmp_path / "st")],
                           capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 0, shown.stderr
    task = {t["task_id"]: t for t in json.loads(shown.stdout)["tasks"]}["c1"]
    assert task["status"] == "completed"
    result = task["result"]
    assert result["files_changed"] == ["calc.py"]
    assert result["commands"] == [{"command": TEST_CMD, "returncode": 0}]
    assert result["final_text"] == "Fixed add(): it subtracted. The test passes."
    assert (result["turns"], result["tool_calls"], result["stop_reason"]) == (5, 4, "end_turn")
    assert result["repo"] == str(repo.resolve())
    # the task's figures there are the usage the server reported, over 5 calls
    assert task["calls"] == len(reported) == 5
    assert task["tokens"] == sum(r["input_tokens"] + r["output_tokens"]
                                 + r["cache_read_input_tokens"] + r["cache_creation_5m"]
                                 + r["cache_creation_1h"] for r in reported)


def test_bad_script_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": []}\nnot json\n')
    out = subprocess.run([str(BIN), "fake-api", "--port", "0", "--script", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "bad.jsonl:2" in out.stderr
