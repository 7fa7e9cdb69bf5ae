"""The governed path and the process: gateway, agent context, orchestrator, composition root.

May import every layer below it; nothing below imports it.
"""

from scheduler.runtime._agent import Agent as Agent
from scheduler.runtime._agent import Decomposable as Decomposable
from scheduler.runtime._build import Parts as Parts
from scheduler.runtime._build import build_parts as build_parts
from scheduler.runtime._call import Route as Route
from scheduler.runtime._context import AgentContext as AgentContext
from scheduler.runtime._context import FileOps as FileOps
from scheduler.runtime._context import PathEscapeError as PathEscapeError
from scheduler.runtime._context import ShellOps as ShellOps
from scheduler.runtime._context import ShellResult as ShellResult
from scheduler.runtime._gateway import Gateway as Gateway
from scheduler.runtime._orchestrator import Orchestrator as Orchestrator
from scheduler.runtime._quality import LlmJudge as LlmJudge
from scheduler.runtime._quality import QualityScorer as QualityScorer
from scheduler.runtime._report import RunReport as RunReport
from scheduler.runtime._report import TaskOutcome as TaskOutcome
from scheduler.runtime._shell import is_dangerous as is_dangerous
from scheduler.runtime._tools import Tool as Tool
from scheduler.runtime._tools import ToolError as ToolError
from scheduler.runtime._tools import ToolLoop as ToolLoop
from scheduler.runtime._tools import ToolLoopResult as ToolLoopResult

__all__ = [
    "Agent",
    "AgentContext",
    "Decomposable",
    "FileOps",
    "Gateway",
    "LlmJudge",
    "Orchestrator",
    "Parts",
    "PathEscapeError",
    "QualityScorer",
    "Route",
    "RunReport",
    "ShellOps",
    "ShellResult",
    "TaskOutcome",
    "Tool",
    "ToolError",
    "ToolLoop",
    "ToolLoopResult",
    "build_parts",
    "is_dangerous",
]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
