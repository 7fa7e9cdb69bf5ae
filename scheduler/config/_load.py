"""Loading a config file safely, and turning validation problems into one ConfigError.

A config file is untrusted input: it may be binary, not UTF-8, nested
thousands of levels deep, or a YAML "billion laughs" whose aliases expand to
more nodes than memory holds.  Each of these becomes one :class:`ConfigError`
in bounded time and memory, before pydantic sees the data.

Error messages name the dotted field path and show the value given, but never
echo a whole table (a task's table holds its prompt) or a long string.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scheduler.config._base import FieldProblem
from scheduler.config._config import VibeConfig
from scheduler.core import ConfigError

#: Larger config files are refused before they are read into memory.
MAX_FILE_BYTES = 16 * 1024 * 1024
#: Tables and arrays nested deeper than this are refused (the deepest real key is ~5).
MAX_DEPTH = 32
#: A YAML document whose aliases expand to more nodes than this is refused.
MAX_NODES = 1_000_000
_SHOWN_CHARS = 60


class _Shown:
    """A value as an error message shows it (``repr`` is the text itself)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def shown(value: Any) -> Any:
    """What an error message may show of ``value``: scalars as given, long strings cut,
    tables and arrays only by their size (a task's table holds its prompt)."""
    if isinstance(value, _Shown):
        return value
    if isinstance(value, dict):
        return _Shown(f"<table of {len(value)} keys>")
    if isinstance(value, list | tuple):
        scalars = all(isinstance(v, int | float | bool | None) for v in value)
        if scalars and len(repr(value)) <= _SHOWN_CHARS:
            return list(value)
        return _Shown(f"<array of {len(value)} items>")
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return _Shown(repr(value[:_SHOWN_CHARS]) + "…")
    if isinstance(value, str | int | float | bool | None):
        return value
    return _Shown(f"<{type(value).__name__}>")


def config_from_dict(data: dict[str, Any]) -> VibeConfig:
    """Validate ``data``; the first problem becomes one :class:`ConfigError`."""
    _check_depth(data)
    try:
        return VibeConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = [str(p) for p in loc]
        value: Any = err.get("input")
        reason = err["msg"].removeprefix("Value error, ")
        problem = (err.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblem):
            path.extend(problem.field.split("."))
            value, reason = problem.value, problem.reason
        elif err["type"] == "missing":
            value = _Shown("<missing>")
        field = ".".join(path) or "config"
        raise ConfigError(field, shown(value), reason) from None


def load_config(path: str | Path) -> VibeConfig:
    """Load a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file."""
    p = Path(path)
    text = _read_text(p)
    data: Any
    try:
        data = _parse_yaml(p, text) if p.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _file_error(p, f"malformed TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise _file_error(p, f"malformed YAML: {exc}") from None
    except RecursionError:
        raise _file_error(p, f"nested deeper than {MAX_DEPTH} levels") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _file_error(p, f"must hold a table of settings, not a {type(data).__name__}")
    return config_from_dict(data)


def _file_error(p: Path, reason: str) -> ConfigError:
    return ConfigError("config file", str(p), " ".join(reason.split()))


def _read_text(p: Path) -> str:
    chunks: list[bytes] = []
    size = 0
    try:
        with p.open("rb") as f:
            # in chunks: read(limit) would allocate the limit up front, and a device or
            # FIFO named as the config has no size to check first
            while chunk := f.read(64 * 1024):
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise _file_error(p, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
                chunks.append(chunk)
    except OSError as exc:
        raise _file_error(p, f"cannot read: {exc.strerror or exc}") from None
    raw = b"".join(chunks)
    if b"\x00" in raw:
        raise _file_error(p, "a binary file, not TOML or YAML text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _file_error(p, f"not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                             f"{exc.start})") from None


def _parse_yaml(p: Path, text: str) -> Any:
    """``yaml.safe_load``, refusing alias bombs, recursive aliases and deep nesting first."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node, p)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _count_nodes(root: yaml.Node, p: Path) -> None:
    """Count the nodes ``root`` expands to (aliases counted each time they are used),
    in time linear in the document: each node's expanded size is computed once."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _file_error(p, f"nested deeper than {MAX_DEPTH} levels")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise _file_error(p, "an alias refers to a node that contains it")
        visiting.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        visiting.discard(key)
        sizes[key] = total
        if total > MAX_NODES:
            raise _file_error(p, f"aliases expand to more than {MAX_NODES:,} values")
        return total

    size(root, 0)


def _check_depth(data: Any) -> None:
    """Refuse tables nested deeper than :data:`MAX_DEPTH`, naming the key where it happens
    (iteratively: no recursion)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise ConfigError(".".join(path[:4]) + ".…", _Shown("<nested value>"),
                              f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, (*path, str(k))) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((v, (*path, str(i))) for i, v in enumerate(value))
