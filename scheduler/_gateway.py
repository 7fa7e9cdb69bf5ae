"""The one path of every model call (DESIGN.md "One path for every model call").

::

    1 route     → model tier, reason, fallback                  R4, R6
    2 estimate  → TokenCounter (tiktoken, calibrated per model)   R2.2
    3 admit     → Tracker.reserve(task, estimate)  may pause      R1, R3
    4 lease     → allocator (when configured)                     R5.3–5.5
    5 call      → Provider.complete, bounded by call_time_s       R1.3
    6 settle    → actual usage → store, tracker, calibration      R2.1–2.4
    7 signal    → events: alerts, routing, health                 R3, R6.6

Each step is a small method so the parts that own it can be swapped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ._config import TIERS, VibeConfig
from ._errors import OverloadedError, ProviderTimeoutError
from ._events import EventBus
from ._provider import Completion, CompletionRequest, Message, Provider
from ._task import TaskHandle
from ._tokens import Estimate, TokenCounter
from ._tracker import Crossing, Reservation, Tracker
from ._usage import Usage, cost_usd


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes and why."""

    model: str
    reason: str
    fallback: str | None = None


class Gateway:
    """Routes, estimates, admits, calls, settles and signals every model call."""

    def __init__(
        self,
        *,
        config: VibeConfig,
        tracker: Tracker,
        counter: TokenCounter,
        provider: Provider,
        bus: EventBus,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.counter = counter
        self.provider = provider
        self.bus = bus
        self._clock = clock

    # 1 route -------------------------------------------------------------------------
    def route(self, task: TaskHandle, requested: str | None = None) -> Route:
        """Preferred model of the task type, one tier down above 70 % of the budget."""
        if requested:
            return Route(requested, "requested by agent")
        row = self.config.task_types.get(task.profile.task_type)
        model = row.preferred_model if row else "sonnet"
        used = self.tracker.fraction_used(task.id)
        reason = f"complexity: {task.profile.complexity}, budget: {used:.0%}"
        if (used > self.config.routing.downgrade_above or task.flags.get("prefer_cheaper")) and (
            model != TIERS[0]
        ):
            model = TIERS[TIERS.index(model) - 1]
            reason += " (one tier down under budget pressure)"
        if task.spec.requires_high_capability and TIERS.index(model) < 1:
            model = "sonnet"
            reason += " (capability floor: sonnet)"
        return Route(model, reason, row.fallback_model if row else None)

    # 2 estimate ----------------------------------------------------------------------
    def estimate(
        self,
        model: str,
        messages: Sequence[Message],
        system: str,
        context: str,
        tools: Sequence[Mapping[str, Any]],
    ) -> Estimate:
        return self.counter.estimate(model, messages, system=system, context=context, tools=tools)

    def estimated_cost(self, model: str, prompt_tokens: int, max_tokens: int) -> float:
        return cost_usd(Usage(prompt_tokens, max_tokens), self.config.model_spec(model))

    # 3 admit -------------------------------------------------------------------------
    async def admit(self, task: TaskHandle, model: str, tokens: int, cost: float) -> Reservation:
        # with a shared store (Redis) this also holds the amounts atomically across processes
        return await self.tracker.reserve_shared(task.id, model=model, tokens=tokens, cost_usd=cost)

    # 5 call --------------------------------------------------------------------------
    async def call(self, task: TaskHandle, request: CompletionRequest) -> Completion:
        limit = task.profile.limits.call_time_s
        try:
            with anyio.fail_after(limit if limit else float("inf")):
                return await self.provider.complete(request)
        except TimeoutError:
            raise ProviderTimeoutError(
                request.model, f"call exceeded the per-call limit of {limit:g} s"
            ) from None

    # 6 settle ------------------------------------------------------------------------
    async def settle(
        self, task: TaskHandle, model: str, completion: Completion, estimate: Estimate,
        reservation: Reservation,
    ) -> list[Crossing]:
        usage = completion.usage
        event = self.tracker.make_event(
            task.id, model=model, usage=usage,
            cost_usd=cost_usd(usage, self.config.model_spec(model)),
        )
        crossings = await self.tracker.charge(event, reservation)
        actual_input = usage.prompt_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        self.counter.reconcile(estimate, actual_input)
        task.calls += 1
        task.model = model
        return crossings

    # 7 signal ------------------------------------------------------------------------
    def signal(self, task: TaskHandle, crossings: Sequence[Crossing]) -> None:
        for c in crossings:
            self.bus.emit(
                f"budget_{c.level}",
                f"{c.scope} {c.dimension} at {c.fraction:.0%} ({c.used:g} of {c.limit:g})",
                task_id=task.id,
                level="warning" if c.level != "warning" else "info",
                scope=c.scope, dimension=c.dimension, used=c.used, limit=c.limit,
            )
            if c.level == "warning":
                task.flags["prefer_cheaper"] = True

    # the whole path --------------------------------------------------------------------
    async def complete(
        self,
        task: TaskHandle,
        messages: Sequence[Message],
        *,
        system: str = "",
        context: str = "",
        tools: Sequence[Mapping[str, Any]] = (),
        max_tokens: int = 1024,
        model: str | None = None,
        stream: bool = False,
        hints: Mapping[str, Any] | None = None,
    ) -> Completion:
        route = self.route(task, model)
        try:
            return await self._complete_on(
                task, route, messages, system, context, tools, max_tokens, stream, hints
            )
        except (OverloadedError, ProviderTimeoutError) as exc:
            if not route.fallback or route.fallback == route.model:
                raise
            self.bus.emit(
                "model_fallback",
                f"{route.model} failed ({type(exc).__name__}); retrying on {route.fallback}",
                task_id=task.id, level="warning", model=route.model, fallback=route.fallback,
            )
            fallback = Route(route.fallback, f"fallback after {type(exc).__name__}")
            return await self._complete_on(
                task, fallback, messages, system, context, tools, max_tokens, stream, hints
            )

    async def _complete_on(
        self,
        task: TaskHandle,
        route: Route,
        messages: Sequence[Message],
        system: str,
        context: str,
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int,
        stream: bool,
        hints: Mapping[str, Any] | None,
    ) -> Completion:
        est = self.estimate(route.model, messages, system, context, tools)
        cost = self.estimated_cost(route.model, est.calibrated, max_tokens)
        reservation = await self.admit(task, route.model, est.calibrated + max_tokens, cost)
        try:
            request = CompletionRequest(
                model=route.model,
                model_id=self.config.model_spec(route.model).model_id,
                messages=messages,
                system=(system + ("\n\n" + context if context else "")),
                tools=tools,
                max_tokens=max_tokens,
                stream=stream,
                task_id=task.id,
                hints=dict(hints or {}),
            )
            completion = await self.call(task, request)
            crossings = await self.settle(task, route.model, completion, est, reservation)
        finally:
            if reservation.active:
                with anyio.CancelScope(shield=True):
                    await self.tracker.release(reservation)
        self.signal(task, crossings)
        return completion
