"""Shared pieces of the deadlock tests: a scripted locking agent and a virtual-time run."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from agents import AgentContext
from scheduler import Event, Limits, TaskSpec, VibeConfig
from scheduler.config import PriorityClass
from scheduler.core import FixedWallClock
from scheduler.runtime import Orchestrator, RunReport
from scheduler.testing import FRIDAY, ScriptedProvider
from tests._observe_helpers import instant_shell_context


class LockingAgent:
    """Follows ``params``: ``calls`` LLM calls, then takes ``locks`` in order.

    ``locks`` items are names (exclusive) or ``[name, "shared"]``; ``hold_s`` is
    slept after each acquisition; ``wait_for`` is a task id waited for while
    holding them; ``give_up_s`` bounds each lock wait (then all are dropped and
    the agent starts over, a cycle that dissolves on its own).  A requeued
    attempt (``ctx.attempt > 1``) does the same work again.
    """

    async def run(self, ctx: AgentContext) -> str:
        p = ctx.task.params
        for _ in range(int(p.get("calls", 0))):
            await ctx.llm.complete([{"role": "user", "content": "step"}], max_tokens=64)
        for _ in range(100):
            if await self._locked_part(ctx, p):
                break
            await anyio.sleep(float(p.get("retry_after_s", 1.0)))
        if p.get("write"):
            await ctx.files.write(str(p["write"]), f"{ctx.task.id} attempt {ctx.attempt}")
        return f"{ctx.task.id} done"

    async def _locked_part(self, ctx: AgentContext, p: dict[str, Any]) -> bool:
        give_up = p.get("give_up_s")
        async with AsyncExitStack() as stack:
            for item in p.get("locks", []):
                name, mode = (item, "exclusive") if isinstance(item, str) else item
                with anyio.move_on_after(float(give_up) if give_up else float("inf")) as scope:
                    await stack.enter_async_context(
                        ctx.locks.open_lock(name, exclusive=mode == "exclusive")
                    )
                if scope.cancelled_caught:
                    return False
                await anyio.sleep(float(p.get("hold_s", 1.0)))
            if p.get("wait_for"):
                await ctx.wait_for(str(p["wait_for"]))
            await anyio.sleep(float(p.get("work_s", 0.5)))
        return True


class Sleeper:
    """Sleeps ``sleep_s`` and ends (used to make a later task start later)."""

    async def run(self, ctx: AgentContext) -> str:
        await anyio.sleep(float(ctx.task.params.get("sleep_s", 0.5)))
        return "slept"


def spec(task_id: str, *, priority: PriorityClass = "normal", depends_on: tuple[str, ...] = (),
         budget: Limits | None = None, **params: Any) -> TaskSpec:
    return TaskSpec(id=task_id, agent="locker", prompt="Fix the lock order",
                    task_type="bug_fix", complexity="simple", priority=priority,
                    depends_on=depends_on, budget=budget, params=params)


def make_orch(tmp_path: Path, **cfg: Any) -> Orchestrator:
    """File writes without worker threads: on trio's MockClock a thread wait lets the clock
    jump to the next deadline, which would make the virtual timeline depend on the load."""
    config = VibeConfig(state_dir=tmp_path, store="memory", session_id="s1", **cfg)
    return Orchestrator(
        config, provider=ScriptedProvider(latency_s=0.01),
        agents={"locker": LockingAgent, "sleeper": Sleeper}, wall=FixedWallClock(FRIDAY),
        context_factory=instant_shell_context,
    )


class Observed:
    """Victim events, and what the victim still held when its event was emitted."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.victims: list[str] = []
        self.held_at_event: dict[str, list[str]] = {}
        self.events: list[Event] = []
        orch.bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.name == "deadlock_victim":
            assert event.task_id is not None
            self.events.append(event)
            self.victims.append(event.task_id)
            self.held_at_event[event.task_id] = self.orch.locks.held_by(event.task_id)


async def run_scenario(orch: Orchestrator, specs: list[TaskSpec],
                       limit_s: float = 3600.0) -> tuple[RunReport, Observed]:
    observed = Observed(orch)
    with anyio.fail_after(limit_s):
        report = await orch.run(specs)
    return report, observed


def assert_clean(orch: Orchestrator) -> None:
    """No lock held, nobody waiting, an empty wait-for graph."""
    stats = orch.locks.statistics()
    assert (stats.resources_held, stats.holders, stats.waiters) == (0, 0, 0)
    assert orch.waits.who_waits_for_whom() == []
