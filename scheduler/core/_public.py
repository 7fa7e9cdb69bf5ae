"""Reprs and tracebacks that show where a user imports a name from (STYLE.md 18)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import FunctionType


def publish(package: str, names: Iterable[str], namespace: Mapping[str, object]) -> None:
    """Give the plain classes and functions re-exported by ``package`` its name as
    ``__module__`` (``scheduler.Orchestrator``, not ``scheduler.runtime._orchestrator``).

    Dataclasses and pydantic models keep their defining module: their annotations are
    resolved through it.
    """
    for name in names:
        obj = namespace[name]
        if not isinstance(obj, type | FunctionType):
            continue
        if isinstance(obj, type) and (dataclasses.is_dataclass(obj)
                                      or hasattr(obj, "model_fields")):
            continue
        if obj.__module__.startswith(f"{package}.") or obj.__module__ == package:
            obj.__module__ = package
