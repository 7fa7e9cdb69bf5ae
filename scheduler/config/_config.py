"""The whole configuration and loading it from TOML or YAML.

Every number of SPEC.md R1.3/R1.4 lives in the sections as a default and can
be overridden from TOML or YAML.  Loading turns any validation problem into a
:class:`~scheduler.ConfigError` naming the dotted field path and the value.

The sections are defined by theme in the sibling modules; this module
assembles them into :class:`VibeConfig` and re-exports them, so both
``scheduler.config`` and this module name every config type.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from scheduler.config._base import (
    PRIORITY_VALUES,
    TASK_TYPES,
    TIERS,
    Complexity,
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
)
from scheduler.core import ConfigError

__all__ = [
    "PRIORITY_VALUES", "TASK_TYPES", "TIERS", "AlertsConfig", "AllocatorConfig", "BudgetsConfig",
    "Complexity", "DeadlockConfig", "DistributedConfig", "GlobalPoolConfig", "HealthConfig",
    "Limits", "MetricsConfig", "ModelSpec", "ObserveConfig", "OutageWindow", "OverdraftConfig",
    "PoliciesConfig", "PoolConfig", "PriorityClass", "ProviderConfig", "RoutingConfig",
    "SimulatedProviderConfig", "TaskSpec", "TaskType", "TaskTypeSpec", "Tier", "VibeConfig",
    "config_from_dict", "load_config",
]


class TaskSpec(FrozenModel):
    """A task to run: which agent, what to do, and optional overrides."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    agent: str
    prompt: str = ""
    task_type: TaskType | None = None
    complexity: Complexity | None = None
    priority: PriorityClass = "normal"
    depends_on: tuple[str, ...] = ()
    budget: Limits | None = None
    requires_high_capability: bool = False
    params: dict[str, Any] = Field(default_factory=dict)


class VibeConfig(FrozenModel):
    """The whole configuration of one orchestrator."""

    state_dir: Path = Path(".vibe-engine")
    store: str = "sqlite"
    session_id: str | None = None
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
    observe: ObserveConfig = Field(default_factory=ObserveConfig)
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    tasks: tuple[TaskSpec, ...] = ()

    @field_validator("models", mode="before")
    @classmethod
    def _merge_models(cls, value: Any) -> Any:
        return merge_models(value)

    @model_validator(mode="after")
    def _complete_catalog(self) -> VibeConfig:
        unranked = [t for t in TIERS if self.models[t].rank is None]
        if unranked:
            raise ValueError(f"models {unranked} need a rank: the routing policies name them")
        ids = [t.id for t in self.tasks]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate task ids {dupes}")
        unknown = sorted(set(self.distributed.global_pools) - set(self.allocator.pools))
        if unknown:
            raise ValueError(f"distributed.global_pools {unknown} are not allocator pools; "
                             f"known: {sorted(self.allocator.pools)}")
        return self

    def model_spec(self, tier: str) -> ModelSpec:
        """The catalog entry for ``tier`` (raises ConfigError for an unknown tier)."""
        try:
            return self.models[tier]
        except KeyError:
            known = list(self.models)
            raise ConfigError("models", tier, f"unknown model; known: {known}") from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def config_from_dict(data: dict[str, Any]) -> VibeConfig:
    """Validate ``data``; the first problem becomes one :class:`ConfigError`."""
    try:
        return VibeConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        raise ConfigError(_field_path(loc), err.get("input"), err["msg"]) from None


def load_config(path: str | Path) -> VibeConfig:
    """Load a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", str(p), f"cannot read: {exc.strerror}") from None
    data: Any
    if p.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("<file>", str(p), f"malformed YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<file>", str(p), f"malformed TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("<root>", type(data).__name__, "config must be a table/mapping")
    return config_from_dict(data)
