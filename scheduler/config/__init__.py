"""The configuration model: pydantic sections, defaults from the spec, loading, policies.

Owns ``VibeConfig`` and its sections, TOML/YAML loading with field-path errors, and
the one way every policy is loaded.  May import ``scheduler.core`` and ``policies``.
"""

from scheduler.config._base import PRIORITY_VALUES as PRIORITY_VALUES
from scheduler.config._base import TASK_TYPES as TASK_TYPES
from scheduler.config._base import TIERS as TIERS
from scheduler.config._base import Complexity as Complexity
from scheduler.config._base import PriorityClass as PriorityClass
from scheduler.config._base import TaskType as TaskType
from scheduler.config._base import Tier as Tier
from scheduler.config._budgets import AlertsConfig as AlertsConfig
from scheduler.config._budgets import BudgetsConfig as BudgetsConfig
from scheduler.config._budgets import Limits as Limits
from scheduler.config._budgets import OverdraftConfig as OverdraftConfig
from scheduler.config._budgets import TaskTypeSpec as TaskTypeSpec
from scheduler.config._budgets import WebhookConfig as WebhookConfig
from scheduler.config._config import TaskSpec as TaskSpec
from scheduler.config._config import VibeConfig as VibeConfig
from scheduler.config._load import config_from_dict as config_from_dict
from scheduler.config._load import load_config as load_config
from scheduler.config._policies import BUILTIN_POLICIES as BUILTIN_POLICIES
from scheduler.config._policies import LoadedPolicies as LoadedPolicies
from scheduler.config._policies import load_policies as load_policies
from scheduler.config._provider import ModelSpec as ModelSpec
from scheduler.config._provider import OutageWindow as OutageWindow
from scheduler.config._provider import ProviderConfig as ProviderConfig
from scheduler.config._provider import SimulatedProviderConfig as SimulatedProviderConfig
from scheduler.config._provider import api_key_problem as api_key_problem
from scheduler.config._provider import base_url_problem as base_url_problem
from scheduler.config._runtime import AllocatorConfig as AllocatorConfig
from scheduler.config._runtime import DeadlockConfig as DeadlockConfig
from scheduler.config._runtime import DistributedConfig as DistributedConfig
from scheduler.config._runtime import GlobalPoolConfig as GlobalPoolConfig
from scheduler.config._runtime import HealthConfig as HealthConfig
from scheduler.config._runtime import MetricsConfig as MetricsConfig
from scheduler.config._runtime import ObserveConfig as ObserveConfig
from scheduler.config._runtime import PoliciesConfig as PoliciesConfig
from scheduler.config._runtime import PoolConfig as PoolConfig
from scheduler.config._runtime import RoutingConfig as RoutingConfig
from scheduler.config._runtime import ShellConfig as ShellConfig
from scheduler.config._runtime import TracingConfig as TracingConfig
from scheduler.config._serve import ServeConfig as ServeConfig
from scheduler.config._serve import ServeKey as ServeKey
from scheduler.config._store import SQLITE_URL as SQLITE_URL
from scheduler.config._store import sqlite_file as sqlite_file

__all__ = [
    "BUILTIN_POLICIES",
    "PRIORITY_VALUES",
    "SQLITE_URL",
    "TASK_TYPES",
    "TIERS",
    "AlertsConfig",
    "AllocatorConfig",
    "BudgetsConfig",
    "Complexity",
    "DeadlockConfig",
    "DistributedConfig",
    "GlobalPoolConfig",
    "HealthConfig",
    "Limits",
    "LoadedPolicies",
    "MetricsConfig",
    "ModelSpec",
    "ObserveConfig",
    "OutageWindow",
    "OverdraftConfig",
    "PoliciesConfig",
    "PoolConfig",
    "PriorityClass",
    "ProviderConfig",
    "RoutingConfig",
    "ServeConfig",
    "ServeKey",
    "ShellConfig",
    "SimulatedProviderConfig",
    "TaskSpec",
    "TaskType",
    "TaskTypeSpec",
    "Tier",
    "TracingConfig",
    "VibeConfig",
    "WebhookConfig",
    "api_key_problem",
    "base_url_problem",
    "config_from_dict",
    "load_config",
    "load_policies",
    "sqlite_file",
]
