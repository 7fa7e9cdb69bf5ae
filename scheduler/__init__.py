"""vibe-engine's scheduler: budgets, tracking, stores, leases, deadlocks, routing.

The public API is re-exported here; implementation modules are private.
"""

from ._allocator import Allocator as Allocator
from ._allocator import open_allocator as open_allocator
from ._budget import TaskProfile as TaskProfile
from ._budget import day_limits as day_limits
from ._budget import detect_complexity as detect_complexity
from ._budget import detect_task_type as detect_task_type
from ._budget import resolve_task as resolve_task
from ._clock import FixedWallClock as FixedWallClock
from ._clock import SystemWallClock as SystemWallClock
from ._clock import WallClock as WallClock
from ._config import PRIORITY_VALUES as PRIORITY_VALUES
from ._config import TASK_TYPES as TASK_TYPES
from ._config import TIERS as TIERS
from ._config import Limits as Limits
from ._config import ModelSpec as ModelSpec
from ._config import TaskSpec as TaskSpec
from ._config import VibeConfig as VibeConfig
from ._config import config_from_dict as config_from_dict
from ._config import load_config as load_config
from ._deadlock import DeadlockDetector as DeadlockDetector
from ._deadlock import WaitForGraph as WaitForGraph
from ._errors import AllocationError as AllocationError
from ._errors import BudgetError as BudgetError
from ._errors import BudgetExceededError as BudgetExceededError
from ._errors import ConfigError as ConfigError
from ._errors import DecisionError as DecisionError
from ._errors import LeaseError as LeaseError
from ._errors import ModelUnavailableError as ModelUnavailableError
from ._errors import OverdraftDeniedError as OverdraftDeniedError
from ._errors import OverloadedError as OverloadedError
from ._errors import PluginError as PluginError
from ._errors import ProviderError as ProviderError
from ._errors import ProviderTimeoutError as ProviderTimeoutError
from ._errors import RateLimitedError as RateLimitedError
from ._errors import SpendLimitError as SpendLimitError
from ._errors import StoreError as StoreError
from ._errors import StoreUnavailableError as StoreUnavailableError
from ._errors import TaskAbortedError as TaskAbortedError
from ._errors import VibeEngineError as VibeEngineError
from ._errors import WouldBlockError as WouldBlockError
from ._events import Event as Event
from ._events import EventBus as EventBus
from ._health import HealthMonitor as HealthMonitor
from ._leases import Lease as Lease
from ._locks import LockManager as LockManager
from ._orchestrator import Orchestrator as Orchestrator
from ._orchestrator import RunReport as RunReport
from ._pause import PauseController as PauseController
from ._provider import Completion as Completion
from ._provider import CompletionRequest as CompletionRequest
from ._provider import Provider as Provider
from ._provider import RateLimitInfo as RateLimitInfo
from ._quota import GlobalQuota as GlobalQuota
from ._resolve import resolve_object as resolve_object
from ._routing import Router as Router
from ._tokens import Estimate as Estimate
from ._tokens import TokenCounter as TokenCounter
from ._tracker import Crossing as Crossing
from ._tracker import Remaining as Remaining
from ._tracker import Reservation as Reservation
from ._tracker import Tracker as Tracker
from ._usage import Totals as Totals
from ._usage import Usage as Usage
from ._usage import UsageEvent as UsageEvent
from ._usage import cost_usd as cost_usd

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
