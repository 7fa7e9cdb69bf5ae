"""The one path of every model call (DESIGN.md "One path for every model call").

::

    1 route     → model tier, reason, fallback                  R4, R6
    2 estimate  → TokenCounter (tiktoken, calibrated per model)   R2.2
    3 admit     → Tracker.reserve(task, estimate)  may pause      R1, R3
    4 lease     → Allocator.acquire (when configured)             R5.3–5.5
    5 call      → Provider.complete, bounded by call_time_s       R1.3
    6 settle    → actual usage → store, tracker, calibration,
                  Allocator.settle (unused tokens back to the pool) R2.1–2.4, R5.4
    7 signal    → events: alerts, routing, health                 R3, R6.6

Each step is a small method so the parts that own it can be swapped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from scheduler.allocator._allocator import Allocator
from scheduler.allocator._leases import Lease
from scheduler.budget import Crossing, Estimate, Reservation, TokenCounter, Tracker
from scheduler.config._config import VibeConfig
from scheduler.core._errors import (
    BudgetExceededError,
    FinishRequestedError,
    OverdraftDeniedError,
    OverloadedError,
    ProviderError,
    ProviderTimeoutError,
    WouldBlockError,
)
from scheduler.core._events import EventBus
from scheduler.core._provider import Completion, CompletionRequest, Message, Provider
from scheduler.core._usage import Usage, UsageEvent, cost_usd
from scheduler.routing._health import error_kind_of
from scheduler.routing._replan import Replanner
from scheduler.routing._router import Router, task_info
from scheduler.runtime._quality import make_quality_scorer
from scheduler.tasks._state import TaskHandle

_log = structlog.get_logger("vibe_engine.gateway")

#: Called with every settled model call's usage event (metrics, tests).
SettleHook = Callable[[TaskHandle, UsageEvent], None]

if TYPE_CHECKING:
    from scheduler.control._alerts import AlertRuntime
    from scheduler.control._pause import Decision, PauseController

#: Called before a paused task waits for a decision: give back every lease it holds.
PauseHook = Callable[[TaskHandle], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes and why."""

    model: str
    reason: str
    fallback: str | None = None


_CallOn = Callable[[Route], Awaitable[Completion]]


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
        allocator: Allocator | None = None,
        router: Router | None = None,
        controller: PauseController | None = None,
        alerts: AlertRuntime | None = None,
    ) -> None:
        self.config = config
        self.allocator = allocator
        self.tracker = tracker
        self.counter = counter
        self.provider = provider
        self.bus = bus
        self._clock = clock
        self.router = router or Router(config, bus=bus, clock=clock)
        self.controller = controller
        self.alerts = alerts
        #: R3.4: a paused task holds no leases; the allocator registers its release here.
        self.on_pause: list[PauseHook] = []
        self.health = self.router.health
        #: R6.2/R6.7: simplify, defer (or, at an attempt's start, break down) a task.
        self.replanner = Replanner(config, self.router, bus=bus, clock=clock)
        if self.health.ping is None:
            self.health.ping = self.ping
        self.settle_hooks: list[SettleHook] = []
        #: R4.3: scores answers the provider did not score (``routing.quality_scorer``).
        self.scorer = make_quality_scorer(config, self)

    async def ping(self, model: str) -> Completion:
        """R6.4: the cheap health-check completion (not charged to any task)."""
        return await self.provider.complete(CompletionRequest(
            model=model, model_id=self.config.model_spec(model).model_id,
            messages=[{"role": "user", "content": "ping"}], max_tokens=1, task_id="health-check",
        ))

    # 1 route -------------------------------------------------------------------------
    def route(
        self, task: TaskHandle, requested: str | None = None,
        hints: Mapping[str, Any] | None = None, need_tokens: int = 0,
    ) -> Route:
        """R4.2/R6.1 through the router: complexity, budget pressure, health, capability floor."""
        if requested:
            return Route(requested, "requested by agent")
        decision = self.router.choose(
            task_info(task, hints), self.tracker.fraction_used(task.id), task.priority,
            over_budget=self.over_budget(task, need_tokens),
        )
        model, reason = decision.model, decision.reason
        cheaper = self._cheaper(task, model, need_tokens, decision.downgraded)
        if cheaper is not None:
            model, reason = cheaper
            reason = f"{decision.reason} {reason}"
        return Route(model, reason, decision.fallback)

    def _cheaper(
        self, task: TaskHandle, model: str, need: int, downgraded: bool
    ) -> tuple[str, str] | None:
        """R3.2/R3.3: one tier down after a warning; the cheapest tier when aggressive."""
        tiers = list(self.router.catalog.tiers)
        usable = self.health.usable(task.priority) - self.over_budget(task, need)
        floor = 1 if task.spec.requires_high_capability else 0
        idx = tiers.index(model) if model in tiers else 0
        if task.flags.get("aggressive"):
            target, why = floor, "(cheapest tier: aggressive cost reduction, R3.3)"
        elif task.flags.get("prefer_cheaper") and not downgraded:
            target, why = max(idx - 1, floor), "(one tier down after a budget warning, R3.2)"
        else:
            return None
        for i in range(target, idx):
            if tiers[i] in usable:
                return tiers[i], why
        return None

    def _next_fallback(self, task: TaskHandle, model: str, skip: list[str]) -> str | None:
        """R6.1: where a failed call goes next — a usable substitute not skipped."""
        usable = self.health.usable(task.priority)
        subs = self.router.catalog.substitutes(model, task.profile.task_type)
        return next((t for t in subs if t in usable and t not in skip and t != model), None)

    def over_budget(self, task: TaskHandle, tokens: int) -> frozenset[str]:
        """Tiers whose per-model token budget (any scope of the task) cannot take ``tokens``."""
        out = set()
        for tier in self.router.catalog.tiers:
            for scope in self.tracker.scopes(task.id):
                cap = scope.limits.tokens_by_model.get(tier)  # type: ignore[call-overload]
                held = scope.used(f"tokens:{tier}") + scope.reserved_by_model.get(tier, 0)
                if cap is not None and held + tokens > cap:
                    out.add(tier)
        return frozenset(out)

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

    async def count_api(self, request: CompletionRequest, est: Estimate) -> Estimate:
        """With ``provider.count_tokens = "api"``, the provider's own count replaces the
        calibrated tiktoken one (the raw count still feeds calibration)."""
        count = getattr(self.provider, "count_tokens", None)
        if self.config.provider.count_tokens != "api" or count is None:
            return est
        return Estimate(est.raw, int(await count(request)), est.model)

    def estimated_cost(self, model: str, prompt_tokens: int, max_tokens: int) -> float:
        return cost_usd(Usage(prompt_tokens, max_tokens), self.config.model_spec(model))

    # 3 admit -------------------------------------------------------------------------
    async def admit(self, task: TaskHandle, model: str, tokens: int, cost: float) -> Reservation:
        """Reserve the estimate; at the limit pause for a decision (R3.4) and try again.

        A pending pause takes effect here (outside critical sections, R3.6);
        inside a critical section the overdraft grace may cover the call (R3.5).
        """
        ctl = self.controller
        if ctl is None:
            # with a shared store (Redis) this also holds the amounts atomically across processes
            return await self.tracker.reserve_shared(
                task.id, model=model, tokens=tokens, cost_usd=cost
            )
        while True:
            if self.alerts is not None:
                await self.signal(task, self.tracker.time_crossings(task.id))
            await self.pause_point(task)
            try:
                return await ctl.reserve(task.id, model=model, tokens=tokens, cost_usd=cost)
            except BudgetExceededError as exc:
                await ctl.request_pause(task.id, error=exc)
            except OverdraftDeniedError as exc:
                cause = exc.__cause__
                await ctl.request_pause(
                    task.id, exc.reason,
                    error=cause if isinstance(cause, BudgetExceededError) else None,
                )
            await self._release(task)
            self._decided(task, await ctl.wait_decision(task.id))

    async def admit_ops(
        self, task: TaskHandle, *, file_edits: int = 0, shell_commands: int = 0,
        dangerous_commands: int = 0,
    ) -> None:
        """R3.4 for operation budgets: at a file-edit or shell-command limit the task pauses
        for a decision (add budget, finish, review) instead of failing, then checks again."""
        ctl = self.controller
        while True:  # a pending token/cost pause waits for the next model call: the agent
            try:     # first saves what the last (paid) call produced
                self.tracker.check(task.id, file_edits=file_edits, shell_commands=shell_commands,
                                   dangerous_commands=dangerous_commands)
                return
            except BudgetExceededError as exc:
                if ctl is None:
                    raise
                await ctl.request_pause(task.id, error=exc)
            await self._release(task)
            self._decided(task, await ctl.wait_decision(task.id))

    async def pause_point(self, task: TaskHandle) -> None:
        """A safe point: a pending pause takes effect here, after the task's leases are given
        back (no-op inside a critical section of the task, R3.6)."""
        if self.controller is not None:
            release = self._releaser(task)
            self._decided(task, await self.controller.wait_if_paused(task.id, release=release))

    def _releaser(self, task: TaskHandle) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            await self._release(task)

        return release

    async def _release(self, task: TaskHandle) -> None:
        for hook in list(self.on_pause):
            await hook(task)

    def _decided(self, task: TaskHandle, decision: Decision | None) -> None:
        """Continue after ``add_budget``; unwind the agent after ``finish``."""
        if decision is not None and decision.action == "finish":
            raise FinishRequestedError(task.id, decision.source)

    # 4 lease -----------------------------------------------------------------------------
    async def _lease(self, task: TaskHandle, tokens: int, reservation: Reservation) -> Lease:
        """The provider lease; a shared budget hold (Redis) is kept alive while it waits, so
        a long queue cannot let the hold lapse and the budget be spent twice."""
        assert self.allocator is not None
        if reservation.hold is None or reservation.hold.local:
            return await self.allocator.acquire(task.id, tokens=tokens)
        try:
            return self.allocator.acquire_nowait(task.id, tokens=tokens)
        except WouldBlockError:
            pass
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_hold, reservation)
            lease = await self.allocator.acquire(task.id, tokens=tokens)
            tg.cancel_scope.cancel()
        return lease

    async def _keep_hold(self, reservation: Reservation) -> None:
        every = self.config.distributed.hold_ttl_s / 3
        while True:
            await anyio.sleep(every)
            if not await self.tracker.renew_hold(reservation):
                _log.warning("budget_hold_lapsed", task_id=reservation.task_id,
                             tokens=reservation.tokens)

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
        if self.allocator is not None:  # R5.2: demotion above 50 % of the task's tokens
            self.allocator.set_token_fraction(task.id, self.tracker.token_fraction(task.id))
        actual_input = usage.prompt_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        self.counter.reconcile(estimate, actual_input)
        task.calls += 1
        task.model = model
        for hook in self.settle_hooks:
            hook(task, event)
        return crossings

    # 7 signal ------------------------------------------------------------------------
    async def signal(self, task: TaskHandle, crossings: Sequence[Crossing]) -> None:
        """Apply the alert policy (R3) and mirror its flags onto the task handle."""
        if self.alerts is not None:
            if crossings:
                await self.alerts.apply(task.id, crossings)
            flags = self.alerts.flags(task.id)
            task.flags["prefer_cheaper"] = flags.prefer_cheaper
            task.flags["aggressive"] = flags.aggressive
            task.flags["alert_level"] = flags.indicator
            if self.alerts.consume_checkpoint_request(task.id):
                task.flags["checkpoint_requested"] = True
            return
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
        if model is None:  # R6.7: a routed call may wait for its model or be simplified
            await self.replanner.before_call(task, lambda: self.tracker.fraction_used(task.id))
        need = max_tokens + self.estimate(
            self.router.catalog.strongest, messages, system, context, tools
        ).calibrated

        async def on(route: Route) -> Completion:
            return await self._complete_on(
                task, route, messages, system, context, tools, max_tokens, stream, hints
            )

        route, completion = await self._with_fallbacks(
            task, self.route(task, model, hints, need), need, on
        )
        if model is None:  # R4.3 corrections apply to routed calls only
            completion = await self._corrected(task, route, messages, completion, hints, need, on)
        return completion

    async def _scored(
        self, task: TaskHandle, messages: Sequence[Message], completion: Completion
    ) -> Completion:
        """R4.3: an answer the provider did not score gets the configured scorer's score."""
        if completion.quality is not None or self.scorer is None:
            return completion
        quality = await self.scorer.score(task, list(messages), completion)
        return completion if quality is None else replace(completion, quality=quality)

    async def _with_fallbacks(
        self, task: TaskHandle, route: Route, need: int, on: _CallOn
    ) -> tuple[Route, Completion]:
        """R6.1: a 529 or timeout moves the call to the next usable, in-budget substitute."""
        tried: list[str] = []
        while True:
            try:
                return route, await on(route)
            except (OverloadedError, ProviderTimeoutError) as exc:
                tried.append(route.model)
                skip = [*tried, *self.over_budget(task, need)]
                nxt = route.fallback if route.fallback not in skip else None
                nxt = nxt or self._next_fallback(task, route.model, skip)
                if nxt is None:
                    raise
                self.bus.emit(
                    "model_fallback",
                    f"{route.model} failed ({type(exc).__name__}); retrying on {nxt}",
                    task_id=task.id, level="warning", model=route.model, fallback=nxt,
                )
                route = Route(nxt, f"fallback after {type(exc).__name__}",
                              self._next_fallback(task, nxt, [*skip, nxt]))

    async def _corrected(
        self, task: TaskHandle, route: Route, messages: Sequence[Message],
        completion: Completion, hints: Mapping[str, Any] | None, need: int, on: _CallOn,
    ) -> Completion:
        """R4.3: a wrong choice (low quality, haiku failing twice) retries on the next tier."""
        completion = await self._scored(task, messages, completion)
        for _ in range(len(self.router.catalog.tiers) - 1):
            upgrade = self.router.report_outcome(
                task_info(task, hints), route.model, success=True, quality=completion.quality,
                complete=completion.stop_reason != "max_tokens",
            )
            if upgrade is None:
                break
            retry = self.route(task, None, hints, need)  # at least the upgraded tier, if usable
            if retry.model == route.model:
                break
            try:
                completion = await self._scored(task, messages, await on(retry))
            except (OverloadedError, ProviderTimeoutError) as exc:
                # the answer we have stands; the failure is recorded in model health
                self.bus.emit(
                    "routing_upgrade_failed",
                    f"retry on {retry.model} failed ({type(exc).__name__}); keeping the "
                    f"{route.model} answer", task_id=task.id, level="warning",
                    model=retry.model,
                )
                break
            route = retry
        return completion

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
        est = await self.count_api(
            request, self.estimate(route.model, messages, system, context, tools)
        )
        cost = self.estimated_cost(route.model, est.calibrated, max_tokens)
        reservation = await self.admit(task, route.model, est.calibrated + max_tokens, cost)
        lease = None
        try:
            if self.allocator is not None:
                lease = await self._lease(task, est.calibrated + max_tokens, reservation)
            started = self._clock()
            try:
                completion = await self.call(task, request)
            except ProviderError as exc:
                self.health.record_call(route.model, False, self._clock() - started,
                                        error_kind_of(exc))
                if exc.usage is not None:  # failed, but consumed tokens (a dropped stream)
                    partial = Completion("", exc.usage, route.model, stop_reason="error")
                    await self.signal(task, await self.settle(task, route.model, partial, est,
                                                              reservation))
                raise
            self.health.record_call(route.model, True, self._clock() - started,
                                    retries=completion.attempts - 1)
            if lease is not None and self.allocator is not None:
                u = completion.usage
                self.allocator.settle(lease.id, u.prompt_tokens + u.completion_tokens,
                                      output_tokens=u.completion_tokens)
            crossings = await self.settle(task, route.model, completion, est, reservation)
        finally:
            if lease is not None and lease.active and self.allocator is not None:
                self.allocator.release(lease.id)  # the call failed or was cancelled
            if reservation.active:
                with anyio.CancelScope(shield=True):
                    await self.tracker.release(reservation)
        await self.signal(task, crossings)
        return completion
