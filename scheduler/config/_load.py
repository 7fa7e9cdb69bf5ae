"""Loading a config file safely, and turning validation problems into one ConfigError.

A config file is untrusted input: it may be binary, not UTF-8, nested
thousands of levels deep, a YAML "billion laughs" whose aliases expand to
more nodes than memory holds, a FIFO or a device, or give a key twice.  Each
of these becomes one :class:`ConfigError` in bounded time and memory, before
pydantic sees the data.  A UTF-8 byte-order mark (Windows editors write one)
is skipped.

Error messages name the dotted field path and show the value given, but never
echo a whole table (a task's table holds its prompt) or a long string.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
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
_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    """Load a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON (``.json``) config file;
    any other name is read as TOML."""
    p = Path(path)
    text = _read_text(p)
    data: Any
    try:
        if p.suffix in (".yaml", ".yml"):
            data = _parse_yaml(p, text)
        elif p.suffix == ".json":
            data = _parse_json(p, text)
        else:
            data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _file_error(p, f"malformed TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise _file_error(p, f"malformed YAML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _file_error(p, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise _file_error(p, f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # Python reads no integer of more than 4,300 digits
        reason = "an integer too long to read" if "digits" in str(exc) else str(exc)
        raise _file_error(p, f"malformed {_FORMATS.get(p.suffix, 'TOML')}: {reason}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _file_error(p, f"must hold a table of settings, not a {type(data).__name__}")
    return config_from_dict(data)


def _file_error(p: Path, reason: str) -> ConfigError:
    return ConfigError("config file", str(p), " ".join(reason.split()))


def _read_text(p: Path) -> str:
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer forever
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise _file_error(p, f"cannot read: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _file_error(p, f"not a regular file ({_kind(info.st_mode)})")
        raise _file_error(p, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    with os.fdopen(fd, "rb") as f:
        chunks: list[bytes] = []
        total = 0
        try:
            # in chunks, counted: the file may grow while it is read
            while chunk := f.read(64 * 1024):
                total += len(chunk)
                if total > MAX_FILE_BYTES:
                    raise _file_error(p, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
                chunks.append(chunk)
        except OSError as exc:
            raise _file_error(p, f"cannot read: {exc.strerror or exc}") from None
    return _decode(p, b"".join(chunks))


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _decode(p: Path, raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _file_error(p, "UTF-16 or UTF-32 text; save it as UTF-8")
    if b"\x00" in raw:
        raise _file_error(p, "a binary file, not TOML, YAML or JSON text")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise _file_error(p, f"not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                             f"{exc.start})") from None


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def _parse_json(p: Path, text: str) -> Any:
    """``json.loads`` refusing a key given twice in one object (it keeps the last)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as dup:
        with contextlib.suppress(yaml.YAMLError):  # most JSON is YAML too: YAML's nodes
            _parse_yaml(p, text)                      # give the key's path and line
        raise _file_error(p, f"key {shown(dup.key)!r} given twice in one object") from None


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
    in time linear in the document: each node's expanded size is computed once.  A key
    given twice in one mapping is refused (YAML loaders keep the last, silently)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node, path: tuple[str, ...]) -> int:
        if len(path) > MAX_DEPTH:
            raise _file_error(p, f"nested deeper than {MAX_DEPTH} levels")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise _file_error(p, "an alias refers to a node that contains it")
        visiting.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, (*path, str(i))) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            _unique_keys(node, path)
            total += sum(size(k, (*path, "<key>")) + size(v, (*path, _name(k)))
                         for k, v in node.value)
        visiting.discard(key)
        sizes[key] = total
        if total > MAX_NODES:
            raise _file_error(p, f"aliases expand to more than {MAX_NODES:,} values")
        return total

    size(root, ())


def _name(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "<key>"


def _unique_keys(node: yaml.MappingNode, path: tuple[str, ...]) -> None:
    first: dict[tuple[str, str], int] = {}
    for k, _v in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
            continue
        line = k.start_mark.line + 1
        if (k.tag, k.value) in first:
            raise ConfigError(".".join((*path, str(k.value))), shown(k.value),
                              f"duplicate key at line {line} (first given at line "
                              f"{first[k.tag, k.value]})")
        first[k.tag, k.value] = line


def _check_depth(data: Any) -> None:
    """Refuse tables nested deeper than :data:`MAX_DEPTH`, and strings holding a lone
    surrogate (JSON and YAML escapes can write ``\\ud800``; it is no text a file name, a
    store or a request can carry), naming the key where it happens (iteratively: no
    recursion)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise ConfigError(".".join(path[:4]) + ".…", _Shown("<nested value>"),
                              f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str) and _SURROGATE.search(value):
            raise ConfigError(".".join(path) or "config", shown(value),
                              "holds a lone surrogate (an escape such as \\ud800), not text")
        if isinstance(value, dict):
            for k, v in value.items():
                key = str(k)
                if _SURROGATE.search(key):
                    raise ConfigError(".".join((*path, _escaped(key))), shown(key),
                                      "a key holding a lone surrogate, not text")
                stack.append((v, (*path, key)))
        elif isinstance(value, list | tuple):
            stack.extend((v, (*path, str(i))) for i, v in enumerate(value))


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
