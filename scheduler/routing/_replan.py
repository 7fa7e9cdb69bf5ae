"""Applying replanning decisions (R6.2, R6.7) — the orchestrator's side of the policy.

:meth:`Replanner.plan` gathers the plain data for the
:class:`~policies.replan.ReplanPolicy` (what the task wants, what its priority
may use now, the budget used, whether its agent can ``decompose``) and returns
the decision.  The helpers apply a decision: :meth:`Replanner.break_down`
turns a task into smaller task specs plus a verification task,
:meth:`Replanner.wait_deferred` queues a task until its model recovers, and
:meth:`Replanner.simplify` tells the agent (through ``handle.signals.simplify``) to do
only the key part.  Each emits one event.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from policies.complexity import TaskInfo
from policies.replan import (
    BreakDown,
    Defer,
    ReplanDecision,
    ReplanInput,
    ReplanPolicy,
    Simplify,
)
from scheduler.config import TaskSpec, VibeConfig, load_policies
from scheduler.core import EventBus
from scheduler.routing._router import Router, companion
from scheduler.tasks import TaskHandle, TaskStatus


def can_decompose(agent: object | None) -> bool:
    return agent is not None and callable(getattr(agent, "decompose", None))


class Replanner:
    """Builds replanning input, asks the policy, applies its decisions."""

    def __init__(
        self,
        config: VibeConfig,
        router: Router,
        *,
        bus: EventBus,
        policy: ReplanPolicy | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.config = config
        self.router = router
        self.bus = bus
        self.policy: ReplanPolicy = policy or load_policies(config).replan
        self._clock = clock
        #: The policy's quick answer for the usual case (``proceeds(budget_fraction,
        #: wanted, usable)``), when the class deciding its plans gives one.
        self._proceeds: Callable[[float, str, frozenset[str]], bool] | None = (
            companion(self.policy, "plan", "proceeds"))

    def plan(
        self, handle: TaskHandle, *, budget_fraction: float, agent: object | None = None,
        deferred_s: float = 0.0, info: TaskInfo | None = None,
    ) -> ReplanDecision:
        """The policy's decision; ``info``: ``task_info(handle)`` when the caller made it."""
        info = info or self.router.info(handle)
        wanted = self.router.min_tier(info.task_id) or self.router.assess(info).tier
        parts = handle.spec.params.get("parts")
        parts = tuple(map(str, parts)) if parts else ()
        data = ReplanInput(
            task=info, wanted=wanted, tiers=self.router.catalog.tiers,
            usable=self.router.health.usable(info.priority), budget_fraction=budget_fraction,
            has_decompose=can_decompose(agent), parts=parts, deferred_s=deferred_s,
        )
        return self.policy.plan(data)

    def proceeds(self, budget_fraction: float, info: TaskInfo) -> bool:
        """True when the policy lets the task proceed with nothing to apply (the budget
        fraction ``budget_fraction``, before any wait), told without building its whole
        input; False when only :meth:`before_call` can tell.  ``info``: the task's
        ``Router.info``."""
        quick = self._proceeds
        if quick is None:
            return False
        router = self.router
        wanted = router.min_tier(info.task_id) or router.complexity.assess(info).tier
        return quick(budget_fraction, wanted, router.health.usable(info.priority))

    async def before_call(
        self, handle: TaskHandle, budget_fraction: Callable[[], float], *,
        agent: object | None = None, allow_break_down: bool = False,
        info: TaskInfo | None = None,
    ) -> BreakDown | None:
        """Apply the policy before a routed call (or an attempt): simplify, defer or proceed.

        A deferred task waits here — holding no lease — until its model serves it or the
        policy's ``max_defer_s`` is used up, then is planned again.  A break-down is only
        returned when ``allow_break_down`` (at the start of an attempt, where the
        orchestrator can split the task); mid-task the gateway's fallbacks cover it.
        ``info``: ``task_info(handle)`` when the caller made it already.
        """
        info = info or self.router.info(handle)
        used = budget_fraction()
        if self.proceeds(used, info):
            return None
        deferred_s = 0.0
        while True:
            decision = self.plan(handle, budget_fraction=used, agent=agent,
                                 deferred_s=deferred_s, info=info)
            if isinstance(decision, Simplify):
                self.simplify(handle, decision)
                return None
            if isinstance(decision, Defer):
                started = self._clock()
                await self.wait_deferred(handle, decision)
                deferred_s += max(self._clock() - started, 1e-9)
                used = budget_fraction()
                continue
            if isinstance(decision, BreakDown) and allow_break_down:
                return decision
            return None

    async def before_routed_call(
        self, handle: TaskHandle, budget_fraction: Callable[[], float], *,
        allow_break_down: bool, info: TaskInfo,
    ) -> tuple[BreakDown | None, float]:
        """:meth:`before_call` for a model call the router routes: the break-down, if any,
        and the budget fraction as last read (the route's budget pressure)."""
        used: list[float] = []

        def reading() -> float:
            used.append(budget_fraction())
            return used[-1]

        split = await self.before_call(handle, reading, allow_break_down=allow_break_down,
                                       info=info)
        return split, used[-1]

    # -- break down (R6.2) -------------------------------------------------------------
    def break_down(self, spec: TaskSpec, decision: BreakDown, agent: object | None = None) -> (
        list[TaskSpec]
    ):
        """Smaller tasks for ``spec``: the agent's ``decompose`` or one per part, then a check."""
        if decision.use_agent_hook and can_decompose(agent):
            parts: list[TaskSpec] = list(agent.decompose(spec))  # type: ignore[union-attr]
        else:
            parts = [self._part(spec, i, part, decision) for i, part in enumerate(decision.parts)]
        out = list(parts)
        if decision.add_verification and parts:
            out.append(spec.model_copy(update={
                "id": f"{spec.id}.verify",
                "prompt": f"Verify that the parts together complete the task: {spec.prompt}",
                "depends_on": tuple(p.id for p in parts),
                "complexity": "simple",
                "params": {**spec.params, "verifies": spec.id, "parts": ()},
            }))
        self.bus.emit(
            "task_broken_down",
            f"task {spec.id} split into {len(parts)} parts plus verification: {decision.reason}",
            task_id=spec.id, parts=[p.id for p in out],
        )
        return out

    @staticmethod
    def _part(spec: TaskSpec, i: int, part: str, decision: BreakDown) -> TaskSpec:
        return spec.model_copy(update={
            "id": f"{spec.id}.part{i + 1}",
            "prompt": f"{spec.prompt}\n\nOnly this part: {part}. Keep the change small and "
                      "self-contained.",
            "complexity": "simple",
            "params": {**spec.params, "parent": spec.id, "part": part, "parts": (),
                       "max_output_tokens": decision.max_output_tokens},
        })

    # -- defer (R6.7) ------------------------------------------------------------------
    async def wait_deferred(self, handle: TaskHandle, decision: Defer) -> bool:
        """Queue ``handle`` until ``decision.until_model`` serves it; False on timeout."""
        self.bus.emit(
            "task_deferred", f"task {handle.id} deferred: {decision.reason}",
            task_id=handle.id, model=decision.until_model, max_wait_s=decision.max_wait_s,
        )
        previous, handle.status = handle.status, TaskStatus.DEFERRED
        reason, handle.reason = handle.reason, decision.reason  # the live view's note
        try:
            with anyio.move_on_after(decision.max_wait_s):
                await self.router.health.wait_usable(decision.until_model, handle.priority)
                self.bus.emit(
                    "task_resumed", f"task {handle.id} resumed on {decision.until_model}",
                    task_id=handle.id, model=decision.until_model,
                )
                return True
            return False
        finally:
            handle.status, handle.reason = previous, reason

    # -- simplify (R6.7) ---------------------------------------------------------------
    def simplify(self, handle: TaskHandle, decision: Simplify) -> None:
        """Tell the agent (``handle.signals.simplify``) to do only the key part."""
        if handle.signals.simplify == decision.instruction:
            return
        handle.signals.simplify = decision.instruction
        self.bus.emit("task_simplified", f"task {handle.id}: {decision.instruction}",
                      task_id=handle.id, level="warning", reason=decision.reason)

