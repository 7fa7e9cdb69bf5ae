"""Every third-party module the code imports is a declared dependency (#23; R7.5).

A module reached only through another package's dependencies (``httpx2`` through
``anthropic``) works until that package changes its own; so each import of
``scheduler``, ``agents`` and ``policies`` must name a distribution listed in
``pyproject.toml`` (``scheduler.testing``'s ``trio`` in the ``testing`` extra, the
tracing module's ``opentelemetry`` in the ``otel`` extra).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"scheduler", "agents", "policies"}


def _imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module → the files importing it."""
    found: dict[str, set[str]] = {}
    for pkg in OURS:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in OURS and top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    specs = [*project["dependencies"], *extras["testing"], *extras["otel"]]
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower().replace("_", "-")
            for s in specs}


def test_issue23_every_imported_module_is_declared() -> None:
    """#23: no third-party import relies on a transitive dependency."""
    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for module, files in sorted(_imported_modules().items()):
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not owners & declared:
            missing[module] = (sorted(owners), sorted(files)[:3])
    assert missing == {}, missing


def test_issue23_floors_are_at_least_the_checked_ones() -> None:
    """#23: the floors found by installing them stay (anthropic 2.5 has the error fields
    the provider reads; httpx2 is imported directly)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = set(project["dependencies"])
    for spec in ("anthropic>=2.5", "httpx2>=2.0", "pydantic>=2.10", "tiktoken>=0.12",
                 "rich>=13.8"):
        assert spec in deps, spec
