"""Agents: the plugin protocol, the governed context, discovery and providers."""

from agents._plugins import PluginInfo as PluginInfo
from agents._plugins import check_agent_class as check_agent_class
from agents._plugins import discover_agents as discover_agents
from agents._plugins import plugin_infos as plugin_infos
from agents._runtime import make_provider as make_provider
from scheduler.runtime import Agent as Agent
from scheduler.runtime import AgentContext as AgentContext
from scheduler.runtime import Decomposable as Decomposable
from scheduler.runtime import ShellResult as ShellResult
from scheduler.runtime import is_dangerous as is_dangerous

__all__ = [
    "Agent", "AgentContext", "Decomposable", "PluginInfo", "ShellResult", "check_agent_class",
    "discover_agents", "is_dangerous", "make_provider", "plugin_infos",
]
