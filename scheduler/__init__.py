"""vibe-engine's scheduler: budgets, tracking, stores, leases, deadlocks, routing.

The public API is re-exported here; implementation modules are private.
"""

from scheduler.allocator._allocator import Allocator as Allocator
from scheduler.allocator._allocator import open_allocator as open_allocator
from scheduler.allocator._leases import Lease as Lease
from scheduler.allocator._quota import GlobalQuota as GlobalQuota
from scheduler.budget._profile import TaskProfile as TaskProfile
from scheduler.budget._profile import day_limits as day_limits
from scheduler.budget._profile import detect_complexity as detect_complexity
from scheduler.budget._profile import detect_task_type as detect_task_type
from scheduler.budget._profile import resolve_task as resolve_task
from scheduler.budget._reservations import Reservation as Reservation
from scheduler.budget._scopes import Crossing as Crossing
from scheduler.budget._tokens import Estimate as Estimate
from scheduler.budget._tokens import TokenCounter as TokenCounter
from scheduler.budget._tracker import Remaining as Remaining
from scheduler.budget._tracker import Tracker as Tracker
from scheduler.config._config import PRIORITY_VALUES as PRIORITY_VALUES
from scheduler.config._config import TASK_TYPES as TASK_TYPES
from scheduler.config._config import TIERS as TIERS
from scheduler.config._config import Limits as Limits
from scheduler.config._config import ModelSpec as ModelSpec
from scheduler.config._config import TaskSpec as TaskSpec
from scheduler.config._config import VibeConfig as VibeConfig
from scheduler.config._config import config_from_dict as config_from_dict
from scheduler.config._config import load_config as load_config
from scheduler.control._pause import PauseController as PauseController
from scheduler.core._clock import FixedWallClock as FixedWallClock
from scheduler.core._clock import SystemWallClock as SystemWallClock
from scheduler.core._clock import WallClock as WallClock
from scheduler.core._errors import AllocationError as AllocationError
from scheduler.core._errors import BudgetError as BudgetError
from scheduler.core._errors import BudgetExceededError as BudgetExceededError
from scheduler.core._errors import ConfigError as ConfigError
from scheduler.core._errors import DecisionError as DecisionError
from scheduler.core._errors import LeaseError as LeaseError
from scheduler.core._errors import ModelUnavailableError as ModelUnavailableError
from scheduler.core._errors import OverdraftDeniedError as OverdraftDeniedError
from scheduler.core._errors import OverloadedError as OverloadedError
from scheduler.core._errors import PluginError as PluginError
from scheduler.core._errors import ProviderError as ProviderError
from scheduler.core._errors import ProviderTimeoutError as ProviderTimeoutError
from scheduler.core._errors import RateLimitedError as RateLimitedError
from scheduler.core._errors import SpendLimitError as SpendLimitError
from scheduler.core._errors import StoreError as StoreError
from scheduler.core._errors import StoreUnavailableError as StoreUnavailableError
from scheduler.core._errors import TaskAbortedError as TaskAbortedError
from scheduler.core._errors import VibeEngineError as VibeEngineError
from scheduler.core._errors import WouldBlockError as WouldBlockError
from scheduler.core._events import Event as Event
from scheduler.core._events import EventBus as EventBus
from scheduler.core._provider import Completion as Completion
from scheduler.core._provider import CompletionRequest as CompletionRequest
from scheduler.core._provider import Provider as Provider
from scheduler.core._provider import RateLimitInfo as RateLimitInfo
from scheduler.core._resolve import resolve_object as resolve_object
from scheduler.core._usage import Totals as Totals
from scheduler.core._usage import Usage as Usage
from scheduler.core._usage import UsageEvent as UsageEvent
from scheduler.core._usage import cost_usd as cost_usd
from scheduler.deadlock._graph import DeadlockDetector as DeadlockDetector
from scheduler.deadlock._graph import WaitForGraph as WaitForGraph
from scheduler.deadlock._locks import LockManager as LockManager
from scheduler.routing._health import HealthMonitor as HealthMonitor
from scheduler.routing._router import Router as Router
from scheduler.runtime._orchestrator import Orchestrator as Orchestrator
from scheduler.runtime._orchestrator import RunReport as RunReport

__all__ = [
    "PRIORITY_VALUES",
    "TASK_TYPES",
    "TIERS",
    "AllocationError",
    "Allocator",
    "BudgetError",
    "BudgetExceededError",
    "Completion",
    "CompletionRequest",
    "ConfigError",
    "Crossing",
    "DeadlockDetector",
    "DecisionError",
    "Estimate",
    "Event",
    "EventBus",
    "FixedWallClock",
    "GlobalQuota",
    "HealthMonitor",
    "Lease",
    "LeaseError",
    "Limits",
    "LockManager",
    "ModelSpec",
    "ModelUnavailableError",
    "Orchestrator",
    "OverdraftDeniedError",
    "OverloadedError",
    "PauseController",
    "PluginError",
    "Provider",
    "ProviderError",
    "ProviderTimeoutError",
    "RateLimitInfo",
    "RateLimitedError",
    "Remaining",
    "Reservation",
    "Router",
    "RunReport",
    "SpendLimitError",
    "StoreError",
    "StoreUnavailableError",
    "SystemWallClock",
    "TaskAbortedError",
    "TaskProfile",
    "TaskSpec",
    "TokenCounter",
    "Totals",
    "Tracker",
    "Usage",
    "UsageEvent",
    "VibeConfig",
    "VibeEngineError",
    "WaitForGraph",
    "WallClock",
    "WouldBlockError",
    "config_from_dict",
    "cost_usd",
    "day_limits",
    "detect_complexity",
    "detect_task_type",
    "load_config",
    "open_allocator",
    "resolve_object",
    "resolve_task",
]
