"""Running the ``vibe-engine`` command line in-process, and writing configs, for the
hardening tests (issue #19): the rule is one line, exit 2, no traceback, nothing written."""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from scheduler.cli._app import app
from scheduler.cli._checks import run_cli


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def cli(argv: list[str], cwd: Path) -> CliResult:
    """Run ``vibe-engine *argv`` in this process, in ``cwd``, as ``main()`` does."""
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, Path.cwd()
    code: Any = 0
    try:
        os.chdir(cwd)
        sys.argv = ["vibe-engine", *argv]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(app)
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())


def assert_one_line_exit_2(result: CliResult, *names: str) -> str:
    """The rule for bad input: exit 2, one line on stderr naming ``names``, no traceback."""
    assert result.code == 2, result
    assert "Traceback" not in result.stderr + result.stdout, result
    lines = result.lines()
    assert len(lines) == 1, result
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@contextlib.contextmanager
def fresh_dir(root: Path, name: str) -> Iterator[Path]:
    """A new empty folder under ``root`` for one hypothesis example."""
    path = root / name
    path.mkdir()
    try:
        yield path
    finally:
        for p in sorted(path.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        path.rmdir()


# -- config files ---------------------------------------------------------------------------

def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (inline tables and arrays included)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_string(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes and backslashes escaped, control characters as \\uXXXX."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_with(settings: dict[str, Any]) -> str:
    """A TOML document setting each dotted key of ``settings``."""
    lines = ['state_dir = "st"']
    lines += [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _unwrap(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def number_paths(model: type[BaseModel], prefix: str = "",
                 named: str | None = None) -> list[tuple[str, str]]:
    """Every dotted key of ``model`` whose value is a number (dict entries by a sample
    key), with the part of it an error must name: the whole key, or, inside a table
    whose other entries a lone setting replaces, the table's field."""
    paths: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        ann = _unwrap(field.annotation)
        origin, args = get_origin(ann), get_args(ann)
        key_path = prefix + name
        if ann in (int, float):
            paths.append((key_path, named or key_path))
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += number_paths(ann, f"{key_path}.", named)
        elif origin is dict and len(args) == 2:
            key = get_args(args[0])[0] if get_args(args[0]) else "anthropic"
            value = _unwrap(args[1])
            if value in (int, float):
                paths.append((f"{key_path}.{key}", named or key_path))
            elif isinstance(value, type) and issubclass(value, BaseModel):
                paths += number_paths(value, f"{key_path}.{key}.", named or key_path)
    return paths
