"""The house's architecture: layers point one way and no module imports in a cycle.

Every ``import`` in ``scheduler/``, ``agents/`` and ``policies/`` is read with ``ast``
(``TYPE_CHECKING`` blocks and imports inside functions included), so a cycle or an
upward import cannot hide behind a lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]

#: Lowest first.  A unit may import its own layer's modules and any lower layer;
#: units sharing a layer are siblings and never import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("policies",),
    ("scheduler.core",),
    # config, and the keep-alive HTTP/1.1 client layer under serve and the provider
    ("scheduler.config", "scheduler.net"),
    ("scheduler.store",),
    ("scheduler.budget",),
    ("scheduler.tasks",),
    ("scheduler.allocator", "scheduler.deadlock", "scheduler.control", "scheduler.routing"),
    ("scheduler.observe",),
    ("scheduler.runtime",),
    ("scheduler",),  # the public face: re-exports the everyday names of the layers below
    # plugins and providers, written against the public face; the governed gateway (#21)
    ("agents", "scheduler.serve"),
    ("scheduler.cli", "scheduler.testing"),  # the application: wires scheduler and agents
)
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def _graph() -> nx.DiGraph[str]:
    files = {_module_name(p): p for top in ("scheduler", "agents", "policies")
             for p in (ROOT / top).rglob("*.py")}
    graph: nx.DiGraph[str] = nx.DiGraph()
    for module, path in files.items():
        graph.add_node(module)
        for target in _imports(path, module):
            if target in files and target != module:
                graph.add_edge(module, target)
    return graph


def unit_of(module: str) -> str:
    """The layer unit a module belongs to: its longest prefix named in :data:`LAYERS`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def test_no_import_cycle_between_modules() -> None:
    """No module reaches itself through imports (``TYPE_CHECKING`` ones included)."""
    cycles = list(nx.simple_cycles(_graph()))
    assert cycles == [], cycles[:5]


def test_lower_layers_never_import_higher_ones() -> None:
    """Each import points to the importer's own unit or a lower layer (DESIGN.md)."""
    wrong = []
    for module, target in _graph().edges:
        a, b = unit_of(module), unit_of(target)
        if a != b and RANK[b] >= RANK[a]:
            wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_every_subpackage_says_what_it_owns() -> None:
    """Each subpackage's docstring says what it owns and what it may import."""
    for init in (ROOT / "scheduler").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "import" in doc and len(doc.splitlines()) >= 2, init


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The layer rule is not vacuous: a TYPE_CHECKING import of the runtime from the
    budget layer is an upward edge."""
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                   "    from scheduler.runtime._gateway import Gateway\n")
    targets = _imports(src, "scheduler.budget.m")
    assert "scheduler.runtime._gateway" in targets
    assert RANK[unit_of("scheduler.runtime._gateway")] > RANK[unit_of("scheduler.budget.m")]
