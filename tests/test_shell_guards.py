"""Agents' shell commands (R1.1): a scrubbed environment and a classification with no
known holes.  See docs/security.md for what these guards cover and what needs an OS
sandbox."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agents import AgentContext, is_dangerous
from scheduler import Limits, TaskSpec
from scheduler.runtime._shell import dangerous_reason, scrubbed_env
from tests._helpers import OrchestratorFactory

KEY = "sk-ant-test-0123456789abcdef"


@pytest.mark.real_asyncio  # the agent's shell commands run as real processes
async def test_r1_1_shell_commands_never_see_secrets(
    make_orchestrator: OrchestratorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R1.1: a command an agent runs gets this process's environment without the provider's
    key (by name, or copied under another name), the built-in secret patterns and the
    names configured in ``shell.secret_env``; ordinary variables pass."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("COPIED_KEY_VALUE", f"Bearer {KEY}")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    monkeypatch.setenv("CORP_VAULT_ADDR", "vault://x")
    monkeypatch.setenv("VIBE_HARMLESS", "visible")
    seen: dict[str, Any] = {}

    class Env:
        async def run(self, ctx: AgentContext) -> None:
            seen["env"] = (await ctx.shell.run("env")).stdout

    orch = make_orchestrator({"e": Env}, shell={"secret_env": ["corp_vault_*"]})
    report = await orch.run([TaskSpec(id="e1", agent="e")])
    assert report.outcomes["e1"].status == "completed", report.outcomes["e1"].reason
    out = seen["env"]
    assert "VIBE_HARMLESS=visible" in out and "PATH=" in out
    for leaked in (KEY, "COPIED_KEY_VALUE", "ghp_secret", "hunter2", "CORP_VAULT_ADDR"):
        assert leaked not in out
    assert os.environ["ANTHROPIC_API_KEY"] == KEY  # the process keeps its own


def test_scrubbed_env_rules() -> None:
    env = {"ANTHROPIC_API_KEY": KEY, "MY_KEY": "x", "OPENAI_APIKEY": "y", "AWS_SECRET_X": "z",
           "HOME": "/home/u", "NOTE": KEY[:6], "X_AUTH_HEADER": "h"}
    out = scrubbed_env(env, api_key_env="ANTHROPIC_API_KEY", secret_env=["MY_KEY"])
    assert out == {"HOME": "/home/u", "NOTE": KEY[:6]}


HOLES = [  # each of these was classified read-only before
    "git branch -D main", "git branch -d old", "git branch newbranch", "git branch -m a b",
    "git branch --delete x", "sort -o out.txt in.txt", "sort --output=out.txt in.txt",
    "sort -ro out in", "find . -fprint list.txt", "find . -fprintf f %p", "find . -fls f",
    "find . -delete", "find . -exec rm {} ;", "git log --output=log.txt",
    "git diff --output=p.diff", "git show --out=x", "printenv", "printenv ANTHROPIC_API_KEY",
    "env", "env rm -rf x", "cat /etc/passwd", "ls ../other-task", "cat ~/.ssh/id_rsa",
    "grep -r key /home", "cat ../../vibe.db", "head --file=/etc/shadow", "git -C / status",
    "git -c core.fsmonitor=x status", "echo hi & rm -rf x", "ls; rm x", "ls\nrm x",
    "./cat notes", "/bin/rm x", "PATH=. ls", "cat $HOME/.netrc", "cat <(rm x)",
    "(rm x)", "uniq in out", "tree -o out", "date -s 2020-01-01", "file -C -m magic",
    "rg --pre ./script x", "cat < /etc/passwd", "echo hi >> f", "ls 2> errors.txt",
]
SAFE = [
    "ls -la", "git status", "cat a | grep x", "git branch", "git branch -a -v",
    "git branch --list 'feat*'", "git branch --show-current", "git log --oneline -5",
    "sort -k2 -n data.txt", "find . -name '*.py' -print", "grep -rn 'foo$' src",
    "ls 2>&1", "ls 2>/dev/null | wc -l", "uniq -c sorted.txt", "tree -L 2", "date +%F",
    "git diff --stat HEAD~1", "head -n 5 notes/a.txt", "cat sub/../a.txt",
]


@pytest.mark.parametrize("command", HOLES)
def test_r1_1_writes_and_outside_paths_are_dangerous(command: str, tmp_path: Path) -> None:
    """R1.1: writing options, commands that run commands, the environment and paths
    outside the task's workspace are all dangerous."""
    assert is_dangerous(command, tmp_path), command
    assert is_dangerous(command)  # without a workspace as well


@pytest.mark.parametrize("command", SAFE)
def test_r1_1_read_only_commands_stay_safe(command: str, tmp_path: Path) -> None:
    assert dangerous_reason(command, tmp_path) == ""


def test_a_symlink_out_of_the_workspace_is_outside(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "link").symlink_to(tmp_path)
    assert "outside the workspace" in dangerous_reason("cat link/secret", ws)


@pytest.mark.real_asyncio  # the agent's shell commands run as real processes
async def test_r1_1_reading_outside_the_workspace_counts_as_dangerous(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.1 through the orchestrator: ``cat ../other/file`` and ``git branch -D`` are
    counted as dangerous commands; with a limit of 1 the second pauses the task."""
    flags: list[bool] = []

    class Peek:
        async def run(self, ctx: AgentContext) -> None:
            flags.append((await ctx.shell.run("cat ../other/notes.txt")).dangerous)
            flags.append((await ctx.shell.run("ls")).dangerous)

    orch = make_orchestrator({"p": Peek})
    report = await orch.run([TaskSpec(id="p1", agent="p", budget=Limits(dangerous_commands=5))])
    assert report.outcomes["p1"].status == "completed", report.outcomes["p1"].reason
    assert flags == [True, False]
    assert report.outcomes["p1"].usage.dangerous_commands == 1
