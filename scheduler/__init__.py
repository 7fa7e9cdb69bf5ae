"""vibe-engine: an asyncio runtime that governs what LLM agents spend.

The everyday names are here: the orchestrator, the configuration users write, the
agent protocol and context for plugin authors, the provider protocol, usage and
the main errors.  Specialist names live in their subpackages (``scheduler.allocator``,
``scheduler.budget``, ``scheduler.control``, ``scheduler.deadlock``, ``scheduler.routing``,
``scheduler.observe``, ``scheduler.store``, ``scheduler.testing`` …); each one's
docstring says what it owns.
"""

from scheduler.config import Limits as Limits
from scheduler.config import ModelSpec as ModelSpec
from scheduler.config import TaskSpec as TaskSpec
from scheduler.config import VibeConfig as VibeConfig
from scheduler.config import config_from_dict as config_from_dict
from scheduler.config import load_config as load_config
from scheduler.core import BudgetExceededError as BudgetExceededError
from scheduler.core import Completion as Completion
from scheduler.core import CompletionRequest as CompletionRequest
from scheduler.core import ConfigError as ConfigError
from scheduler.core import Event as Event
from scheduler.core import Message as Message
from scheduler.core import PluginError as PluginError
from scheduler.core import Provider as Provider
from scheduler.core import ProviderError as ProviderError
from scheduler.core import TaskAbortedError as TaskAbortedError
from scheduler.core import Totals as Totals
from scheduler.core import Usage as Usage
from scheduler.core import UsageEvent as UsageEvent
from scheduler.core import VibeEngineError as VibeEngineError
from scheduler.core._public import publish as _publish
from scheduler.runtime import Agent as Agent
from scheduler.runtime import AgentContext as AgentContext
from scheduler.runtime import Decomposable as Decomposable
from scheduler.runtime import Orchestrator as Orchestrator
from scheduler.runtime import RunReport as RunReport
from scheduler.runtime import TaskOutcome as TaskOutcome
from scheduler.tasks import TaskStatus as TaskStatus

__all__ = [
    "Agent",
    "AgentContext",
    "BudgetExceededError",
    "Completion",
    "CompletionRequest",
    "ConfigError",
    "Decomposable",
    "Event",
    "Limits",
    "Message",
    "ModelSpec",
    "Orchestrator",
    "PluginError",
    "Provider",
    "ProviderError",
    "RunReport",
    "TaskAbortedError",
    "TaskOutcome",
    "TaskSpec",
    "TaskStatus",
    "Totals",
    "Usage",
    "UsageEvent",
    "VibeConfig",
    "VibeEngineError",
    "config_from_dict",
    "load_config",
]

_publish(__name__, __all__, globals())
