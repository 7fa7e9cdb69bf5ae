"""Helpers for the observability tests: demo orchestrators, ANSI stripping, Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agents import ShellResult, discover_agents, is_dangerous, make_provider
from scheduler import VibeConfig
from scheduler.cli._demo import demo_config
from scheduler.observe import BudgetBar, EventView, ModelView, PoolView, Snapshot, TaskView
from scheduler.runtime import FileOps, Orchestrator, ShellOps
from scheduler.runtime._orchestrator import _default_context_factory
from scheduler.tasks import TaskHandle

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage", "--hide-scrollbars",
)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def terminal_console(width: int = 160, height: int = 60) -> tuple[Console, StringIO]:
    """A console that believes it is a terminal (``width`` × ``height``), writing into a
    StringIO."""
    buf = StringIO()
    return Console(file=buf, force_terminal=True, width=width, height=height,
                   color_system="standard"), buf


class _InstantShell(ShellOps):
    """``ctx.shell`` without a subprocess: counted and charged like the real one.

    A real subprocess lets trio's MockClock jump (every task looks blocked) past
    the command's timeout; tests on virtual time use this instead.
    """

    async def run(self, command: str, *, timeout_s: float = 60.0) -> ShellResult:
        dangerous = is_dangerous(command)
        self._ctx.tracker.check(self._ctx.task.id, shell_commands=1,
                                dangerous_commands=int(dangerous))
        await self._ctx.charge_ops(shell_commands=1, dangerous_commands=int(dangerous))
        return ShellResult(command, 0, "", "", dangerous)


class _SyncFiles(FileOps):
    """``ctx.files`` writing in the event loop's thread, with the real one's file lock,
    critical section and counting.

    The real one writes in a worker thread; while it waits, trio's MockClock
    sees every task blocked and jumps.  Tests on virtual time use this instead.
    """

    async def read(self, path: str | Path) -> str:
        return self._resolve(path).read_text(encoding="utf-8")

    async def write(self, path: str | Path, content: str) -> Path:
        full = self._resolve(path)
        ctx = self._ctx
        await ctx.gateway.admit_ops(ctx.handle, file_edits=1)
        async with ctx.open_resource(f"file:{full}"), ctx.critical("file_write"):
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_text(content, encoding="utf-8")
        await ctx.charge_ops(file_edits=1)
        return full


def instant_shell_context(orch: Orchestrator, handle: TaskHandle) -> Any:
    """The real agent context with thread-free files and process-free shell (virtual time)."""
    ctx = _default_context_factory(orch, handle)
    ctx.shell = _InstantShell(ctx, ctx.workspace)
    ctx.files = _SyncFiles(ctx, ctx.workspace)
    return ctx


def demo_orchestrator(tmp_path: Path, *, tasks: int = 8, time_scale: float = 0.05,
                      real_shell: bool = False, staged: bool = False,
                      **overrides: Any) -> Orchestrator:
    """The demo workload on a real SQLite store under ``tmp_path``.

    Shell commands do not start processes unless ``real_shell`` (see
    :class:`_InstantShell`), so the run is exact on a virtual clock.  ``staged`` adds the
    demo's opus outage, deferred task and paused task (as ``vibe-engine demo`` runs it).
    """
    config = demo_config(tmp_path / "state", tasks=tasks, time_scale=time_scale,
                         staged=staged)
    if overrides:
        config = VibeConfig.model_validate({**config.model_dump(), **overrides})
    return Orchestrator(
        config, provider=make_provider(config), agents=discover_agents(),
        context_factory=_default_context_factory if real_shell else instant_shell_context)


def crafted_snapshot() -> Snapshot:
    """States whose features land in other parts (waiting, paused, deferred), crafted as data."""
    tasks = (
        TaskView("w1", "coder", "waiting", queue_position=2, estimated_wait_s=3.5,
                 pool="anthropic"),
        TaskView("p1", "coder", "paused", budget_fraction=1.0,
                 reason="task:p1 tokens exceeded"),
        TaskView("d1", "refactor", "deferred", reason="opus unavailable"),
        TaskView("r1", "qa", "running", model="haiku", tokens=1200, budget_fraction=0.12),
        TaskView("c1", "qa", "completed", model="haiku", tokens=900, budget_fraction=0.09),
    )
    budgets = (
        BudgetBar("session:s1", "tokens", 250_000, 500_000, 0.5, "ok"),
        BudgetBar("session:s1", "tokens:opus", 40_000, 50_000, 0.8, "warning"),
        BudgetBar("day:2026-11-27", "cost_usd", 19.0, 20.0, 0.95, "critical"),
    )
    return Snapshot(
        session_id="s1", at=100.0, tasks=tasks, budgets=budgets,
        pools=(PoolView("anthropic", leases=3, waiting=1, calls_in_use=3, concurrent=50,
                        tokens_available=12_000, tokens_per_minute=400_000, grants=17),),
        models=(ModelView("opus", "unavailable", 5, 0.4, 0.6, 2.5),
                ModelView("sonnet", "recovering", 9, 0.9, 0.1, 0.8),
                ModelView("haiku", "available", 30, 1.0, 0.0, 0.3)),
        events=(EventView("budget_warning", 95.0, "session:s1 tokens:opus at 80%", "r1",
                          "info"),
                EventView("deadlock_victim", 97.0, "agent w2 yielded due to deadlock", "w2",
                          "warning"),
                EventView("model_unavailable", 98.0, "opus temporarily unavailable, switched "
                          "to sonnet", None, "warning")),
        totals={"tokens": 2100, "cost_usd": 0.01, "calls": 2},
    )


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium binary; skip (or fail when VIBE_REQUIRE_CHROMIUM=1) if it is missing."""
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("VIBE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("VIBE_REQUIRE_CHROMIUM=1 but no chromium binary on PATH "
                        "(apt-get install -y chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return binary


def chromium(binary: str, page: Path, profile: Path, *args: str,
             timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a local file with an isolated profile."""
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--v=0", *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "HOME": str(profile)},
    )


def screenshot(binary: str, page: Path, png: Path, profile: Path,
               size: tuple[int, int] = (1280, 1800)) -> subprocess.CompletedProcess[str]:
    """Render ``page`` in headless Chromium and save a PNG screenshot to ``png``."""
    return chromium(binary, page, profile, f"--screenshot={png}",
                    f"--window-size={size[0]},{size[1]}")


def page_errors(stderr: str) -> list[str]:
    """Console errors and uncaught exceptions the page produced (Chromium's own noise ignored)."""
    return [line for line in stderr.splitlines()
            if "Uncaught" in line or ("CONSOLE" in line and "ERROR" in line)
            or "Failed to load resource" in line]
