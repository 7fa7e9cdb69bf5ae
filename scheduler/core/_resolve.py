"""Names resolved once, at start-up (STYLE.md 8).

A policy or store named in config is looked up in a built-in table, then in
an entry-point group, then as ``module:Class``.  An unknown name raises a
:class:`ConfigError` that lists what is available.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from scheduler.core._errors import ConfigError


def resolve_object(
    name: str, *, field: str, builtins: dict[str, Any], group: str | None = None
) -> Any:
    """Return the object ``name`` refers to (see module docstring)."""
    if name in builtins:
        return builtins[name]
    if ":" in name:  # an import path: no entry point is named so (and scanning is slow)
        return _import(name, field)
    eps = entry_points(group=group) if group else ()
    for ep in eps:
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:
                raise ConfigError(field, name, f"entry point failed to load: {exc}") from exc
    available = sorted(set(builtins) | {ep.name for ep in eps})
    hint = f"; available: {', '.join(available)}" if available else ""
    raise ConfigError(field, name, f"unknown name (use 'module:Class'{hint})")


def _import(name: str, field: str) -> Any:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(field, name, f"cannot import module {module_name!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                field, name, f"module {module_name!r} has no attribute {attr!r}"
            ) from None
    return obj
