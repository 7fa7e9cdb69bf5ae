"""Shared helpers for the routing, health and replanning tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from policies.complexity import Depth, Level, TaskInfo
from scheduler import Event, VibeConfig
from scheduler.core import EventBus
from scheduler.routing import HealthMonitor, ModelCatalog, Router


class ManualClock:
    """A clock tests move by hand (for code that takes an injected clock)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def info(
    task_id: str = "t1", task_type: str = "code_modification", *, prompt: str = "",
    complexity: Level = "moderate", tokens: int | None = None, depth: Depth | None = None,
    high: bool = False, priority: int = 2,
) -> TaskInfo:
    return TaskInfo(task_id, task_type, complexity, prompt, tokens, depth, high, priority)


SIMPLE: dict[str, Any] = {"complexity": "simple", "tokens": 1_000, "depth": "direct"}
MODERATE: dict[str, Any] = {"complexity": "moderate", "tokens": 10_000, "depth": "multi_step"}
COMPLEX: dict[str, Any] = {"complexity": "complex", "tokens": 30_000, "depth": "architecture"}


class Recorder:
    """Collects events from a bus."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        bus.subscribe(self.events.append)

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]


def make_router(
    config: VibeConfig | None = None, clock: Callable[[], float] | None = None,
    ping: Callable[[str], Awaitable[Any]] | None = None,
) -> tuple[Router, Recorder]:
    config = config or VibeConfig()
    clk = clock or ManualClock()
    bus = EventBus(clk)
    rec = Recorder(bus)
    catalog = ModelCatalog(config)
    health = HealthMonitor(config, bus, catalog=catalog, clock=clk, ping=ping)
    return Router(config, bus=bus, health=health, catalog=catalog, clock=clk), rec


def knock_out(health: HealthMonitor, model: str) -> None:
    """Three 529s in a row: the model becomes unavailable."""
    for _ in range(health.params.unavailable_after_errors):
        health.record_call(model, False, 0.5, "overloaded")
