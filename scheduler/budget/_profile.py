"""Resolving the budget of a task, a session and a day (R1.2–R1.4).

A task's limits come, from weakest to strongest, from: the per-task defaults
(``budgets.task``), its task type's row of the R1.4 table (tokens, time,
cost), the per-complexity table (R1.3: tokens and time), and the task's own
``budget`` override.  Type and complexity are detected from the task text by
keywords unless the task names them.

The type's row describes a *typical* task of that type (its ``complexity``).
The complexity table therefore applies whenever the task's complexity is not
the typical one — stated by the user, or auto-detected from hints in the text
("fix a typo in one file" is a simple code change: 20,000 tokens and 5 min,
not the 50,000 of a typical one) — and also when the type has no row.

The cost warning (``cost_warning_usd``) follows the effective cost limit: when
the override sets ``cost_usd`` without its own warning, the warning keeps its
fraction of the limit (70 % by default), not the type's dollar amount.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from scheduler.config import (
    TASK_TYPES,
    Complexity,
    Limits,
    TaskSpec,
    TaskType,
    TaskTypeSpec,
    VibeConfig,
)

_SIMPLE_HINTS = ("typo", "single file", "one file", "rename", "format", "docstring", "comment")
_COMPLEX_HINTS = (
    "whole", "entire", "across", "all modules", "architecture", "redesign", "large refactor",
    "security", "trade-off", "migrate",
)
_WORD = re.compile(r"[a-z0-9_\-?]+")
#: Whether any hint is in the text (as ``any(h in text ...)``), in one pass per list.
_SIMPLE, _COMPLEX = (re.compile("|".join(map(re.escape, h))) for h in (_SIMPLE_HINTS,
                                                                        _COMPLEX_HINTS))


@dataclass(frozen=True, slots=True)
class TaskProfile:
    """What the runtime decided about a task before running it."""

    task_type: TaskType
    complexity: Complexity
    limits: Limits
    type_detected: bool
    complexity_detected: bool
    #: The task's per-day limits (``day_budget``), or None.
    day_limits: Limits | None = None


def detect_task_type(text: str, table: dict[TaskType, TaskTypeSpec]) -> TaskType:
    """R1.4: the task type whose keywords match the text best (ties: table order)."""
    lowered = text.lower()
    best: TaskType = "code_modification"
    best_score = 0
    for name in TASK_TYPES:
        spec = table.get(name)
        if spec is None:
            continue
        score = sum(map(lowered.count, spec.keywords))  # no generator frame per keyword
        if score > best_score:
            best, best_score = name, score
    return best


def detect_complexity(text: str, task_type: TaskType, table: dict[TaskType, TaskTypeSpec]) -> (
    Complexity
):
    """Complexity from the type's default, nudged by hints in the text."""
    lowered = text.lower()
    base: Complexity = table[task_type].complexity if task_type in table else "moderate"
    if _COMPLEX.search(lowered):
        return "complex"
    if base != "complex" and _SIMPLE.search(lowered):
        return "simple"
    if base == "simple" and len(_WORD.findall(lowered)) > 120:  # words counted only then
        return "moderate"
    return base


def resolve_task(spec: TaskSpec, config: VibeConfig) -> TaskProfile:
    """Task type, complexity and limits of ``spec`` under ``config``."""
    table = config.task_types
    task_type = spec.task_type or detect_task_type(spec.prompt, table)
    complexity = spec.complexity or detect_complexity(spec.prompt, task_type, table)
    limits = _base_limits(config, task_type, complexity)
    limits = _with_override(limits, spec.budget)
    return TaskProfile(task_type, complexity, limits, spec.task_type is None,
                       spec.complexity is None, spec.day_budget)


#: The configs whose base limits are kept (each with its table, the config held so its
#: ``id`` is not reused while cached), newest last.
_BASE_CACHE: list[tuple[VibeConfig, dict[tuple[str, str], Limits]]] = []


def _base_limits(config: VibeConfig, task_type: TaskType, complexity: Complexity) -> Limits:
    """The limits of a task of this type and complexity before its own override: one
    shared (frozen) model per combination, not a copy per task."""
    table = next((t for c, t in _BASE_CACHE if c is config), None)
    if table is None:
        table = {}
        _BASE_CACHE.append((config, table))
        del _BASE_CACHE[:-4]
    key = (task_type, complexity)
    found = table.get(key)
    if found is None:
        found = table[key] = _resolve_base(config, task_type, complexity)
    return found


def _resolve_base(config: VibeConfig, task_type: TaskType, complexity: Complexity) -> Limits:
    limits = config.budgets.task
    row = config.task_types.get(task_type)
    if row is not None:
        limits = limits.merged(
            Limits(tokens=row.tokens, time_s=row.time_s, cost_usd=row.cost_usd,
                   cost_warning_usd=round(row.cost_usd * config.alerts.warning, 6))
        )
    if row is None or complexity != row.complexity:  # R1.3, stated or detected
        b = config.budgets
        limits = limits.merged(
            Limits(tokens=b.task_tokens_by_complexity[complexity],
                   time_s=b.task_time_s_by_complexity[complexity])
        )
    return limits


#: Merges of (base, override) limits by their identity, both kept so the ids stay theirs:
#: tasks that share their override (a serve key's grouped tasks share its task_budget)
#: share one merged model instead of holding a copy each.  Cleared when full.
_MERGED: dict[tuple[int, int], tuple[Limits, Limits, Limits]] = {}
_MERGED_KEPT = 256


def _with_override(limits: Limits, override: Limits | None) -> Limits:
    """The task's own ``budget`` over ``limits`` (see :func:`_merge`), shared by tasks whose
    base and override are the same objects (both are frozen)."""
    if override is None:
        return limits
    found = _MERGED.get((id(limits), id(override)))
    if found is not None and found[0] is limits and found[1] is override:
        return found[2]
    merged = _merge(limits, override)
    if len(_MERGED) >= _MERGED_KEPT:
        _MERGED.clear()
    _MERGED[(id(limits), id(override))] = (limits, override, merged)
    return merged


def _merge(limits: Limits, override: Limits) -> Limits:
    """``override`` over ``limits``; a new cost limit without its own warning moves the
    warning with it (same fraction of the limit, R3.1)."""
    merged = limits.merged(override)
    given = override.model_fields_set
    old, new, warn = limits.cost_usd, merged.cost_usd, limits.cost_warning_usd
    if "cost_usd" in given and "cost_warning_usd" not in given and warn is not None:
        scaled = None if not (old and new) else round(new * warn / old, 6)
        merged = merged.merged(Limits(cost_warning_usd=scaled))
    return merged


def is_weekend(day: date) -> bool:
    return day.weekday() >= 5


def day_limits(config: VibeConfig, day: date) -> Limits:
    """R1.3: the day budget, lowered automatically on Saturday and Sunday (never raised: a
    weekday limit below the weekend one stays); a cost warning moves with a lowered limit
    (same fraction of it, R3.1)."""
    limits = config.budgets.day
    weekend = config.budgets.weekend_day_cost_usd
    if weekend is not None and is_weekend(day):
        if limits.cost_usd is None:
            return limits.merged(Limits(cost_usd=weekend))
        return _merge(limits, Limits(cost_usd=min(weekend, limits.cost_usd)))
    return limits
