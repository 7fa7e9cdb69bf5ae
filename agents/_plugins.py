"""Agent plugins discovered from entry points and checked once (STYLE.md 9)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from scheduler import PluginError

GROUP = "vibe_engine.agents"

AgentFactory = Callable[[], Any]


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered agent plugin."""

    name: str
    target: str
    distribution: str
    version: str


def check_agent_class(name: str, obj: Any) -> AgentFactory:
    """Validate that ``obj`` builds agents with an ``async def run(ctx)``; name it in errors."""
    if not callable(obj):
        raise PluginError(name, f"{obj!r} is not a class or factory")
    run = getattr(obj, "run", None)
    if run is None:
        raise PluginError(name, "has no run(ctx) method")
    if not inspect.iscoroutinefunction(run):
        raise PluginError(name, "run(ctx) must be 'async def'")
    params = list(inspect.signature(run).parameters)
    expected = 2 if inspect.isclass(obj) else 1
    if len(params) < expected:
        raise PluginError(name, "run must take the agent context: run(self, ctx)")
    factory: AgentFactory = obj
    return factory


def plugin_infos() -> list[PluginInfo]:
    """Every entry point in the agents group, with its distribution and version."""
    out: list[PluginInfo] = []
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        out.append(
            PluginInfo(
                ep.name,
                ep.value,
                dist.metadata["Name"] if dist is not None else "?",
                dist.version if dist is not None else "?",
            )
        )
    return sorted(out, key=lambda p: p.name)


def discover_agents() -> dict[str, AgentFactory]:
    """Load and check every registered agent plugin once."""
    agents: dict[str, AgentFactory] = {}
    for ep in entry_points(group=GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(ep.name, f"entry point {ep.value!r} failed to load: {exc}") from exc
        agents[ep.name] = check_agent_class(ep.name, obj)
    return agents
