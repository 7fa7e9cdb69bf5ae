"""Agent plugins discovered from entry points and checked once (STYLE.md 9).

A plugin that fails to load or fails the checks is *broken*, not fatal: one
bad package installed beside vibe-engine must not stop ``run`` or ``demo`` for
the tasks that never use it.  ``vibe-engine plugins`` lists it with the reason,
and a task that names it fails with that reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from scheduler import PluginError
from scheduler.core import get_logger

GROUP = "vibe_engine.agents"

AgentFactory = Callable[[], Any]
_log = get_logger("vibe_engine.plugins")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered agent plugin."""

    name: str
    target: str
    distribution: str
    version: str
    #: Why the plugin cannot be used ("" when it loads and passes the checks).
    error: str = ""


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


def _load(ep: EntryPoint) -> AgentFactory:
    """Load and check one entry point; :class:`PluginError` names it and says why not."""
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginError(ep.name, f"entry point {ep.value!r} failed to load: "
                                   f"{type(exc).__name__}: {exc}") from exc
    return check_agent_class(ep.name, obj)


class _BrokenAgent:
    """Stands in for a broken plugin: building an agent raises why it is broken."""

    def __init__(self, error: PluginError) -> None:
        self.error = error

    def __call__(self) -> Any:
        raise self.error


def plugin_infos() -> list[PluginInfo]:
    """Every entry point in the agents group, with its distribution, version and, for a
    broken one, why it cannot be used."""
    out: list[PluginInfo] = []
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        try:
            _load(ep)
            error = ""
        except PluginError as exc:
            error = str(exc)
        out.append(
            PluginInfo(
                ep.name,
                ep.value,
                dist.metadata["Name"] if dist is not None else "?",
                dist.version if dist is not None else "?",
                error,
            )
        )
    return sorted(out, key=lambda p: p.name)


def discover_agents() -> dict[str, AgentFactory]:
    """Load and check every registered agent plugin once.

    A broken plugin maps to a factory that raises its :class:`PluginError`, so a task
    using it fails with the reason while every other task runs.
    """
    agents: dict[str, AgentFactory] = {}
    for ep in entry_points(group=GROUP):
        try:
            agents[ep.name] = _load(ep)
        except PluginError as exc:
            _log.warning("agent_plugin_broken", plugin=ep.name, error=str(exc))
            agents[ep.name] = _BrokenAgent(exc)
    return agents
