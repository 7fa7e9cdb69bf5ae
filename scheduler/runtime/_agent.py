"""What an agent plugin is (R7.3).

An agent is a class registered under the entry-point group
``vibe_engine.agents``; the runtime instantiates it with no arguments once
per task attempt and awaits ``run(ctx)``.  Everything the agent does —
model calls, file writes, shell commands, locks, waiting for other tasks —
goes through its :class:`~agents.AgentContext`, so it is counted and governed.

An agent may also offer ``decompose(task) -> list[TaskSpec]`` (R6.2): the
runtime calls it to break a task into smaller ones when only a weaker model
is available.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from scheduler.config import TaskSpec
    from scheduler.runtime._context import AgentContext


@runtime_checkable
class Agent(Protocol):
    """The one method every agent has."""

    async def run(self, ctx: AgentContext) -> Any: ...


@runtime_checkable
class Decomposable(Protocol):
    """An agent that knows how to split its task into smaller tasks."""

    def decompose(self, task: TaskSpec) -> list[TaskSpec]: ...
