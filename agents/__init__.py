"""Agents: the plugin protocol, the governed context, discovery and providers."""

from ._context import AgentContext as AgentContext
from ._context import ShellResult as ShellResult
from ._context import is_dangerous as is_dangerous
from ._plugins import PluginInfo as PluginInfo
from ._plugins import check_agent_class as check_agent_class
from ._plugins import discover_agents as discover_agents
from ._plugins import plugin_infos as plugin_infos
from ._protocol import Agent as Agent
from ._protocol import Decomposable as Decomposable
from ._runtime import make_provider as make_provider

__all__ = [
    "Agent", "AgentContext", "Decomposable", "PluginInfo", "ShellResult", "check_agent_class",
    "discover_agents", "is_dangerous", "make_provider", "plugin_infos",
]
