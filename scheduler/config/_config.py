"""The whole configuration and loading it from TOML or YAML.

Every number of SPEC.md R1.3/R1.4 lives in the sections as a default and can
be overridden from TOML or YAML.  Loading turns any validation problem into a
:class:`~scheduler.ConfigError` naming the dotted field path and the value.

The sections are defined by theme in the sibling modules; this module
assembles them into :class:`VibeConfig` and re-exports them, so both
``scheduler.config`` and this module name every config type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from scheduler.config._base import (
    PRIORITY_VALUES,
    TASK_TYPES,
    TIERS,
    Complexity,
    FieldProblem,
    FrozenModel,
    PriorityClass,
    TaskType,
    Tier,
)
from scheduler.config._budgets import (
    AlertsConfig,
    BudgetsConfig,
    Limits,
    OverdraftConfig,
    TaskTypeSpec,
    default_task_types,
)
from scheduler.config._provider import (
    ModelSpec,
    OutageWindow,
    ProviderConfig,
    SimulatedProviderConfig,
    default_models,
    merge_models,
)
from scheduler.config._runtime import (
    AllocatorConfig,
    DeadlockConfig,
    DistributedConfig,
    GlobalPoolConfig,
    HealthConfig,
    MetricsConfig,
    ObserveConfig,
    PoliciesConfig,
    PoolConfig,
    RoutingConfig,
    ShellConfig,
    TracingConfig,
)
from scheduler.config._serve import ServeConfig, ServeKey
from scheduler.config._store import sqlite_file
from scheduler.core import ConfigError

__all__ = [
    "PRIORITY_VALUES", "TASK_TYPES", "TIERS", "AlertsConfig", "AllocatorConfig", "BudgetsConfig",
    "Complexity", "DeadlockConfig", "DistributedConfig", "GlobalPoolConfig", "HealthConfig",
    "Limits", "MetricsConfig", "ModelSpec", "ObserveConfig", "OutageWindow", "OverdraftConfig",
    "PoliciesConfig", "PoolConfig", "PriorityClass", "ProviderConfig", "RoutingConfig",
    "ServeConfig", "ServeKey", "ShellConfig", "SimulatedProviderConfig", "TaskSpec", "TaskType",
    "TaskTypeSpec", "Tier", "TracingConfig", "VibeConfig",
]

#: A task id names the task's folder (``tasks/<id>/``, ``workspace/<id>/``): it must be a
#: file name (255 bytes on common file systems) with room for suffixes.
MAX_TASK_ID = 128
_SESSION_ID = re.compile(r"[A-Za-z0-9_.\-]+")
#: The sets of field names specs were given, one object per distinct set (see
#: ``TaskSpec.model_post_init``); at most one per combination of TaskSpec's fields.
_FIELDS_SET: dict[frozenset[str], set[str]] = {}


class _SpecFields:
    """Lends its instances' ``__dict__``: CPython keeps the keys of a class's instance
    dicts once, shared, when they are set in the same order (every spec's field names)."""


def _key_sharing(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as a dict that shares its keys with every other spec's: pydantic's own
    dict holds a key table per spec, about 270 of a spec's 670 bytes (R7.1: a run holds
    every spec of its config).  An ordinary dict for every other purpose."""
    lender = _SpecFields()
    for name, value in fields.items():
        setattr(lender, name, value)
    return lender.__dict__


class TaskSpec(FrozenModel):
    """A task to run: which agent, what to do, and optional overrides."""

    id: str = Field(min_length=1, max_length=MAX_TASK_ID, pattern=r"^[A-Za-z0-9_.\-]+$")
    agent: str
    prompt: str = ""
    task_type: TaskType | None = None
    complexity: Complexity | None = None
    priority: PriorityClass = "normal"
    depends_on: tuple[str, ...] = ()
    budget: Limits | None = None
    requires_high_capability: bool = False
    params: dict[str, Any] = Field(default_factory=dict)
    #: At a budget limit: ``pause`` for a person's decision (R3.4), or ``reject`` the call
    #: (its ``BudgetExceededError`` reaches the caller; ``serve`` keys with ``on_limit``).
    on_limit: Literal["pause", "reject"] = "pause"
    #: What the task's own budget counts: this ``session``'s use of the task id, or every
    #: session's in the ``store`` (held atomically across processes on a shared store).
    budget_span: Literal["session", "store"] = "session"
    #: Limits of what the task spends per calendar day (the day ``budgets.day`` counts),
    #: on top of ``budget``; a new day starts from nothing.  With ``budget_span = "store"``
    #: the day counts every session's use of the id, across processes on a shared store.
    day_budget: Limits | None = None

    def model_post_init(self, context: Any, /) -> None:
        # A run of 10,000 tasks would hold 10,000 equal sets of the names its specs set
        # (216 bytes each): they share one.  Pydantic only reads the set, and copies it
        # before ``model_copy`` adds to it (the model is frozen: nothing else writes it).
        names = self.__pydantic_fields_set__
        object.__setattr__(self, "__pydantic_fields_set__",
                           _FIELDS_SET.setdefault(frozenset(names), names))
        object.__setattr__(self, "__dict__", _key_sharing(self.__dict__))

    @field_validator("id")
    @classmethod
    def _not_a_relative_folder(cls, value: str) -> str:
        # "." and ".." as folder names would put the task's usage.json and workspace in
        # the state directory itself, next to vibe.db and the control token
        if value in (".", ".."):
            raise ValueError(f"{value!r} is not a task id (it names a folder)")
        return value


class VibeConfig(FrozenModel):
    """The whole configuration of one orchestrator."""

    state_dir: Path = Path(".vibe-engine")
    store: str = "sqlite"
    #: A task id's characters: it is shown in status, logs and the ``resume`` line.
    session_id: str | None = Field(default=None, min_length=1, max_length=MAX_TASK_ID)
    seed: int = 0
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    task_types: dict[TaskType, TaskTypeSpec] = Field(default_factory=default_task_types)
    #: Named models: the defaults, with the entries given here laid over them.
    models: dict[str, ModelSpec] = Field(default_factory=default_models)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    overdraft: OverdraftConfig = Field(default_factory=OverdraftConfig)
    allocator: AllocatorConfig = Field(default_factory=AllocatorConfig)
    deadlock: DeadlockConfig = Field(default_factory=DeadlockConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    observe: ObserveConfig = Field(default_factory=ObserveConfig)
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    shell: ShellConfig = Field(default_factory=ShellConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tasks: tuple[TaskSpec, ...] = ()

    @field_validator("session_id")
    @classmethod
    def _session_id_chars(cls, value: str | None, info: ValidationInfo) -> str | None:
        # a session begun before ids were checked is resumed under the id it has
        if value is None or _SESSION_ID.fullmatch(value) or (info.context or {}).get(
                "resuming"):
            return value
        raise ValueError("use a task id's characters: letters, digits, '_', '.', '-'")

    @field_validator("state_dir", mode="before")
    @classmethod
    def _a_plain_folder(cls, value: Any) -> Any:
        # "" would be the working directory itself; a control character makes a folder
        # no one can type and garbles every log line and message naming it
        if isinstance(value, str | Path):
            text = str(value)
            if not text.strip():
                raise ValueError("is empty (the working directory is \".\")")
            if any(ord(c) < 32 or ord(c) == 127 for c in text):
                raise ValueError("holds a control character")
        return value

    @field_validator("store")
    @classmethod
    def _a_clear_store(cls, value: str) -> str:
        try:
            sqlite_file(value)
        except ConfigError as exc:
            raise ValueError(exc.reason) from None
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _merge_models(cls, value: Any) -> Any:
        return merge_models(value)

    @model_validator(mode="after")
    def _complete_catalog(self, info: ValidationInfo) -> VibeConfig:
        missing = [t for t in TIERS if t not in self.models]
        if missing:
            raise FieldProblem("models", sorted(self.models),
                               f"models must define every tier; missing {missing}")
        unranked = [t for t in TIERS if self.models[t].rank is None]
        if unranked:
            raise FieldProblem(f"models.{unranked[0]}.rank", None,
                               f"models {unranked} need a rank: the routing policies name them")
        seen: set[str] = set()
        for i, task in enumerate(self.tasks):
            if task.id in seen:
                raise FieldProblem(f"tasks.{i}.id", task.id, "duplicate task id")
            seen.add(task.id)
        for i, task in enumerate(self.tasks):  # a wait for a task never started: refused now
            for j, dep in enumerate(task.depends_on):
                if dep not in seen:
                    raise FieldProblem(f"tasks.{i}.depends_on.{j}", dep,
                                       "no task of the config has this id")
        _refuse_dependency_cycle(self.tasks)
        if not (info.context or {}).get("resuming"):  # its typo fails only its own task
            _refuse_unknown_models(self)
        unknown = sorted(set(self.distributed.global_pools) - set(self.allocator.pools))
        if unknown:
            raise FieldProblem(f"distributed.global_pools.{unknown[0]}", unknown[0],
                               f"{unknown} are not allocator pools; known: "
                               f"{sorted(self.allocator.pools)}")
        return self

    def model_spec(self, tier: str) -> ModelSpec:
        """The catalog entry for ``tier`` (raises ConfigError for an unknown tier)."""
        try:
            return self.models[tier]
        except KeyError:
            known = list(self.models)
            raise ConfigError("models", tier, f"unknown model; known: {known}") from None


def _refuse_unknown_models(config: VibeConfig) -> None:
    """Model names given outside the catalog must name one of it: a typo in a serve key's
    ``allowed_models`` only ever refused the key's calls, and a task's ``params.model``
    (the model the built-in agents ask for) failed the task at run time."""
    names = list(config.models)
    ids = {spec.model_id for spec in config.models.values()}
    for i, key in enumerate(config.serve.keys):
        for j, model in enumerate(key.allowed_models):
            if model not in names and model not in ids:
                raise FieldProblem(f"serve.keys.{i}.allowed_models.{j}", model,
                                   f"unknown model; known: {', '.join(names)} (or their "
                                   "model_id)")
    if config.serve.routing_alias in names or config.serve.routing_alias in ids:
        raise FieldProblem("serve.routing_alias", config.serve.routing_alias,
                           "names a catalog model: calls naming that model would be routed")
    for i, task in enumerate(config.tasks):
        asked = task.params.get("model")
        if asked is not None and (not isinstance(asked, str) or asked not in names):
            raise FieldProblem(f"tasks.{i}.params.model", asked,
                               f"unknown model; known: {', '.join(names)}")


def _refuse_dependency_cycle(tasks: tuple[TaskSpec, ...]) -> None:
    """``depends_on`` edges that close a cycle (a task on itself, a → b → a): the tasks
    would wait for each other until the deadlock detector fails them, so the config is
    refused, naming the edge that closes the cycle."""
    deps = {t.id: t.depends_on for t in tasks}
    index = {t.id: i for i, t in enumerate(tasks)}
    done: set[str] = set()
    for root in deps:
        if root in done:
            continue
        path, on_path = [root], {root}
        stack = [(root, iter(deps[root]))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                cycle = " → ".join([*path[path.index(child):], child])
                raise FieldProblem(
                    f"tasks.{index[node]}.depends_on.{deps[node].index(child)}", child,
                    f"dependency cycle {cycle}: these tasks would wait for each other")
            elif child not in done:
                stack.append((child, iter(deps[child])))
                on_path.add(child)
                path.append(child)
