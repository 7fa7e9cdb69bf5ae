"""The guides' Python snippets run as written and import only public names (#23).

Every ```python block of README.md and docs/*.md is run: the blocks of one page,
in order, as one script (a reader follows a page from top to bottom), in a fresh
temporary directory, with ``docs/examples`` importable.  A ``test_*`` function a
page defines is called too (with a temporary ``tmp_path``).  A block that is a
fragment (it uses an agent's ``ctx`` or needs an API key) is marked with a
``<!-- not run: why -->`` line right above its fence; there are few of them, and
this test counts them so that marking is not the easy way out.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
_NOT_RUN = "<!-- not run"
_OURS = ("scheduler", "agents", "policies")
#: A page's ``test_*`` functions are called as pytest would, with a fresh tmp_path.
_CALL_TESTS = """
import inspect as _inspect, pathlib as _pathlib, tempfile as _tempfile
for _name, _fn in list(globals().items()):
    if _name.startswith("test_") and callable(_fn):
        _params = _inspect.signature(_fn).parameters
        _fn(**({"tmp_path": _pathlib.Path(_tempfile.mkdtemp())} if "tmp_path" in _params
               else {}))
"""


def blocks(page: Path) -> list[tuple[str, bool]]:
    """``(code, runnable)`` of each python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(m["code"], not m["before"].strip().startswith(_NOT_RUN))
            for m in _FENCE.finditer("\n" + text)]


def private_imports(code: str) -> list[str]:
    """Imports of our packages' private modules (``scheduler.runtime._context``)."""
    found = []
    for node in ast.walk(ast.parse(code)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [n for n in names if n.split(".")[0] in _OURS
                  and any(part.startswith("_") for part in n.split("."))]
    return found


def test_issue23_snippets_are_found_and_few_are_not_run() -> None:
    """The extraction sees the guides' blocks; fragments stay the exception."""
    found = {p.name: blocks(p) for p in PAGES}
    assert len(found["guide-agent-plugin.md"]) >= 3 and len(found["guide-policy.md"]) >= 2
    every = [b for bs in found.values() for b in bs]
    skipped = [code for code, runnable in every if not runnable]
    assert len(every) >= 10 and len(skipped) <= 5, skipped


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_issue23_snippets_use_only_public_imports(page: Path) -> None:
    """#23: a guide teaches the public names (``from scheduler import …``, a subpackage's
    ``__all__``), never a private module."""
    for code, _ in blocks(page):
        assert private_imports(code) == [], (page.name, code)


_RUNNABLE = [p for p in PAGES if any(runnable for _, runnable in blocks(p))]


@pytest.mark.real_asyncio  # subprocesses running agents, shells and a fake API server
@pytest.mark.parametrize("page", _RUNNABLE, ids=lambda p: p.name)
def test_issue23_snippets_run_as_written(page: Path, tmp_path: Path) -> None:
    """#23: each page's runnable blocks, in order, run in a fresh directory."""
    script = "\n\n".join(code for code, runnable in blocks(page) if runnable)
    (tmp_path / "snippets.py").write_text(script + "\n" + _CALL_TESTS, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "docs" / "examples")}
    env.pop("ANTHROPIC_API_KEY", None)
    done = subprocess.run([sys.executable, "snippets.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, f"{page.name}:\n{done.stderr[-3000:]}"
