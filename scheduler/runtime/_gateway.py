"""The one path of every model call (DESIGN.md "One path for every model call").

Read top-down in request order::

    complete     the public entry: routed calls may wait, fall back, be corrected
    1 route      → model tier, reason, fallback                  R4, R6
    2 estimate   → TokenCounter (tiktoken, calibrated per model)   R2.2
    3 lease      → Allocator.acquire: the call's turn             R5.3–5.5 (_admission)
    4 admit      → budgets reserve the estimate; may pause        R1, R3  (_admission)
    5 call       → Provider.complete, bounded by call_time_s       R1.3 (_call_limits)
    6 settle     → actual usage → store and tracker, the lease,
                   calibration, health, demotion, ``on_settle``    R2.1–2.4, R5.2, R5.4
    7 signal     → alerts and the task's signals                  R3, R6.6
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from policies.complexity import TaskInfo
from scheduler.allocator import Allocator, Lease
from scheduler.budget import Crossing, Estimate, Reservation, ScopeState, TokenCounter, Tracker
from scheduler.config import VibeConfig
from scheduler.control import AlertRuntime, PauseController
from scheduler.core import (
    AsyncHook,
    Completion,
    CompletionRequest,
    EventBus,
    Hook,
    LeaseError,
    Message,
    OverloadedError,
    Passthrough,
    Provider,
    ProviderTimeoutError,
    TextSink,
    UsageEvent,
    check_options,
    loop_time,
    shield,
)
from scheduler.routing import Replanner, Router, task_info
from scheduler.runtime._admission import Admission
from scheduler.runtime._call import (
    NO_HINTS,
    BreakDownRequested,
    Call,
    Checkpoints,
    Prices,
    Route,
    Routes,
    attempt_request,
    cache_writes,
    counted_by_api,
    output_limits,
    ping_request,
    unreported,
)
from scheduler.runtime._call_limits import CallLimits
from scheduler.runtime._quality import NoScorer, QualityScorer, SignalScorer
from scheduler.runtime._requests import check_request
from scheduler.runtime._tiers import cheaper, next_fallback, over_budget
from scheduler.runtime._unanswered import unanswered
from scheduler.tasks import TaskHandle

#: One attempt of a call, ``(task, route, messages, system, context, tools, call)``.
AttemptFn = Callable[..., Awaitable[Completion]]
#: The lease step, ``(task, tokens, model) -> Lease``.
LeaseFn = Callable[..., Awaitable[Lease]]


class Gateway:
    """Routes, estimates, admits, leases, calls, settles and signals every model call."""

    def __init__(
        self,
        *,
        config: VibeConfig,
        tracker: Tracker,
        counter: TokenCounter,
        provider: Provider,
        bus: EventBus,
        allocator: Allocator,
        router: Router,
        replanner: Replanner,
        controller: PauseController,
        alerts: AlertRuntime,
        clock: Callable[[], float] = loop_time,
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.counter = counter
        self.provider = provider
        self.bus = bus
        self.allocator = allocator
        self.router = router
        self.health = router.health
        #: R6.2/R6.7: simplify, defer (or, at an attempt's start, break down) a task.
        self.replanner = replanner
        self.alerts = alerts
        self.admission = Admission(config=config, tracker=tracker, allocator=allocator,
                                   controller=controller, signal=self.signal,
                                   mirror=self.mirror, flagged=alerts.flagged)
        #: R3.4 for operation budgets (``Admission.admit_ops``); a safe point (R3.6).
        self.admit_ops, self.pause_point = self.admission.admit_ops, self.admission.pause_point
        #: R4.3: scores answers the provider did not score (``routing.quality_scorer``).
        self.scorer: QualityScorer = NoScorer()
        #: Called with every settled model call's usage event (observers, metrics).
        self.on_settle: Hook[[TaskHandle, UsageEvent]] = Hook()
        self._clock = clock
        self._health_clock = getattr(self.health, "clock", None) is clock  # its end: read once
        self._count_api = config.provider.count_tokens == "api"  # the config is frozen
        self._prices = Prices()
        self._call_limits = CallLimits()  # R1.3: every call's per-call limit
        #: One route (and reason text) per routing decision, for the calls routed alike.
        self._routes = Routes()
        #: The attempt and lease steps as called; :meth:`instrument` wraps them.
        self._attempt: AttemptFn = self._complete_on
        self._lease: LeaseFn = self.admission.lease
        # the admission's records an attempt keeps itself, without a method call each:
        # its lease while its call is in flight, its shared hold until it ends
        self._in_call, self._holds = self.admission._in_call, self.admission._holds

    def instrument(self, *, attempt: Callable[[AttemptFn], AttemptFn] | None = None,
                   lease: Callable[[LeaseFn], LeaseFn] | None = None) -> None:
        """Wrap each attempt (tracing spans) and its lease step (lease-wait metrics, spans).
        The composition root calls this only for what the config turns on, so a run
        without tracing or metrics does no per-call work for them."""
        if attempt is not None:
            self._attempt = attempt(self._attempt)
        if lease is not None:
            self._lease = lease(self._lease)

    @property
    def on_pause(self) -> AsyncHook[[TaskHandle]]:
        """Awaited before a paused task waits for a decision: its leases go back (R3.4)."""
        return self.admission.on_pause

    # the public entry -------------------------------------------------------------------
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
        options: Mapping[str, Any] | None = None,
        on_text: TextSink | None = None,
        passthrough: Passthrough | None = None,
        checkpoint: Checkpoints | None = None,
    ) -> Completion:
        """One model call; ``options`` are Messages API options passed through
        (``temperature``, ``tool_choice``, ``thinking`` …, see ``REQUEST_OPTIONS``);
        ``on_text`` receives a streamed answer's text as it arrives; ``passthrough``
        forwards a client's request as it is (``serve``), governed like any call;
        ``checkpoint`` (an agent's context) saves a checkpoint asked for, after the answer."""
        call, route, need, info = await self._prepare(  # a frame gone before the lease wait
            task, messages, system, context, tools, max_tokens, model, stream, hints,
            options, on_text, passthrough)
        try:  # the first try in line: a call waiting for its lease holds no fallback frame
            completion = await self._attempt(task, route, messages, system, context, tools,
                                             call)  # :meth:`_on`, without its call
        except (OverloadedError, ProviderTimeoutError) as exc:
            if not (model is None or self.config.routing.explicit_model_fallback
                    or call.hints.get("allow_fallback")):
                raise
            route, completion = await self._with_fallbacks(call, route, need, exc)
        if model is None and passthrough is None:  # R4.3, routed calls only; a forwarded
            # answer reached the client already
            completion = await self._corrected(call, route, completion, hints, need, info)
        if checkpoint is not None and task.signals.checkpoint_requested:  # R3.3, seldom
            await checkpoint.checkpoint_if_requested()
        return completion

    async def _prepare(
        self, task: TaskHandle, messages: Sequence[Message], system: str, context: str,
        tools: Sequence[Mapping[str, Any]], max_tokens: int, model: str | None, stream: bool,
        hints: Mapping[str, Any] | None, options: Mapping[str, Any] | None,
        on_text: TextSink | None, passthrough: Passthrough | None,
    ) -> tuple[Call, Route, int, TaskInfo | None]:
        """Check the request, replan (R6.2/R6.7), estimate and route: the call, its route,
        the tokens it needs on the strongest tier and routing's view of the task."""
        check_request(messages, system=system, context=context, tools=tools,
                      max_tokens=max_tokens, model=model, hints=hints,
                      models=self.config.models)
        opts = check_options(options) if options else {}
        info: TaskInfo | None = None
        fraction: float | None = None
        scopes = None
        if model is None:  # R6.7: a routed call may wait for its model or be simplified
            # what routing knows of the task stays as it is for the whole call; the
            # replanner's view is the same but for the call's hints
            plain = self.router.info(task)
            info = task_info(task, hints) if hints else plain
            scopes = self.tracker.scopes(task.id)  # read once: the replanner and the route
            fraction = self.tracker.fraction_used(task.id, scopes)
            if not self.replanner.proceeds(fraction, plain):  # the usual call: proceed
                split, fraction = await self.replanner.before_routed_call(
                    task, partial(self.tracker.fraction_used, task.id), info=plain,
                    # R6.2: parts are not split again, nor forwarded calls
                    allow_break_down=not task.split_from and passthrough is None)
                if split is not None:
                    raise BreakDownRequested(task.id, split)
                scopes = None  # a wait may have passed midnight
        max_tokens, out = output_limits(task, max_tokens, opts)
        raw = self.counter.count_prompt(messages, system=system, context=context, tools=tools)
        need = out + self.counter.calibrated_tokens(self.router.catalog.tiers[-1], raw)
        cache = cache_writes(self.counter.cache_writes, len(system) + len(context), hints,
                             passthrough, self.config.provider.cache_system_min_chars)
        call = Call(max_tokens, out, stream, dict(hints) if hints else NO_HINTS, opts, on_text,
                    passthrough, task, messages, system, context, tools, raw, cache)
        # nothing was charged since the replanner's last reading (no wait in between)
        route = self.route(task, model, hints, need, fraction, info, scopes)
        return call, route, need, info

    def _on(self, route: Route, call: Call) -> Awaitable[Completion]:
        """One attempt of ``call`` on ``route`` (the awaitable itself: no frame of its own)."""
        return self._attempt(call.task, route, call.messages, call.system, call.context,
                             call.tools, call)

    async def _with_fallbacks(
        self, call: Call, route: Route, need: int, exc: OverloadedError | ProviderTimeoutError,
    ) -> tuple[Route, Completion]:
        """R6.1: a 529 or timeout (``exc``, on ``route``) moves a call that may fall back to
        the next usable, in-budget substitute.  Each try's reservation and lease are given
        back before the next is admitted (``_complete_on``)."""
        task = call.task
        tried: list[str] = []
        while True:
            tried.append(route.model)
            skip = [*tried, *self.over_budget(task, need)]
            nxt = route.fallback if route.fallback not in skip else None
            nxt = nxt or self._next_fallback(task, route.model, skip)
            if nxt is None:
                raise exc
            self.bus.emit(
                "model_fallback",
                f"{route.model} failed ({type(exc).__name__}); retrying on {nxt}",
                task_id=task.id, level="warning", model=route.model, fallback=nxt,
            )
            route = Route(nxt, f"fallback after {type(exc).__name__}",
                          self._next_fallback(task, nxt, [*skip, nxt]))
            try:
                return route, await self._on(route, call)
            except (OverloadedError, ProviderTimeoutError) as again:
                exc = again

    async def _corrected(
        self, call: Call, route: Route, completion: Completion,
        hints: Mapping[str, Any] | None, need: int, info: TaskInfo | None = None,
    ) -> Completion:
        """R4.3: a wrong choice (low quality, haiku failing twice) retries on the next tier."""
        task, messages = call.task, call.messages
        info = info or task_info(task, hints)
        if completion.quality is None:  # _scored, without a coroutine more per call
            scorer = self.scorer  # the default one without its coroutine either
            quality = (scorer.signals(messages, completion) if type(scorer) is SignalScorer
                       else await scorer.score(task, list(messages), completion))
            if quality is not None:
                completion = replace(completion, quality=quality)
        for _ in range(len(self.router.catalog.tiers) - 1):
            upgrade = self.router.report_outcome(
                info, route.model, success=True, quality=completion.quality,
                complete=completion.stop_reason != "max_tokens",
            )
            if upgrade is None:
                break
            retry = self.route(task, None, hints, need, info=info)  # at least the upgraded
            # tier, if usable
            if retry.model == route.model:
                break
            try:
                completion = await self._scored(task, messages, await self._on(retry, call))
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

    async def _scored(
        self, task: TaskHandle, messages: Sequence[Message], completion: Completion
    ) -> Completion:
        """R4.3: an answer the provider did not score gets the configured scorer's score."""
        if completion.quality is not None:
            return completion
        quality = await self.scorer.score(task, list(messages), completion)
        return completion if quality is None else replace(completion, quality=quality)

    async def _complete_on(
        self, task: TaskHandle, route: Route, messages: Sequence[Message], system: str,
        context: str, tools: Sequence[Mapping[str, Any]], call: Call,
    ) -> Completion:
        """One attempt on ``route``: estimate → lease → admit → call → settle → signal."""
        est = self.counter.calibrated(route.model, call.raw_tokens)
        if self._count_api:
            est = await counted_by_api(self.provider, est, attempt_request(
                self.config, task, route, messages, system, context, tools, call))
        prompt, out, model = est.calibrated, call.out, route.model
        cost = self._prices.cost(self.config, model, prompt, out, call.cache)
        # the lease first: a call waiting for its turn holds no budget (R1.2), but at a limit
        reservation = None if self.admission.fit(task, model, cost, prompt, out) else (
            await self.admission.leased(task, None, model, cost, prompt, out))  # R3.4
        lease: Lease | None = None
        try:
            while reservation is None or lease is None:
                try:
                    lease = await self._lease(task, prompt + out, model)
                except LeaseError as exc:  # the task paused meanwhile: waits for the decision
                    lease = await self.admission.lease_again(task, prompt + out, model, exc)
                if reservation is None:  # None again when a pause gave the lease back
                    reservation = await self.admission.leased(task, lease, model, cost, prompt, out)
            await self.tracker.open_call(reservation, prompt_tokens=prompt,
                                         output_tokens=out)  # durable before the call
            request = attempt_request(  # made once leased: a waiting call holds none
                self.config, task, route, messages, system, context, tools, call)
            completion, crossings = await self.call(task, model, request, est, reservation, lease)
        finally:
            if self._holds:  # Admission.ended: only a shared budget hold is kept there
                self._holds.pop(id(reservation), None)
            if lease is not None and lease.active:
                self.allocator.release(lease.id)  # the call failed or was cancelled
            if reservation is not None and reservation.active:
                with shield():
                    await self.tracker.release(reservation)
        signals = task.signals
        if crossings:
            await self.signal(task, crossings)
        elif (self.alerts.flagged or signals.alert_level != "ok" or signals.prefer_cheaper
              or signals.aggressive):  # else mirrored already (most calls): nothing to do
            self.mirror(task)
        return completion

    async def _failed(self, task: TaskHandle, model: str, exc: BaseException, started: float,
                      est: Estimate, reservation: Reservation, lease: Lease) -> None:
        """A failed or cut-off attempt: model health, and what it is charged (R2.1)."""
        with shield():  # paid: recorded even if cancelled
            await unanswered(self, model, task, exc, self._clock() - started, est,
                             reservation, lease)

    # 1 route -------------------------------------------------------------------------
    def route(
        self, task: TaskHandle, requested: str | None = None,
        hints: Mapping[str, Any] | None = None, need_tokens: int = 0,
        fraction: float | None = None, info: TaskInfo | None = None,
        scopes: tuple[ScopeState, ...] | None = None,
    ) -> Route:
        """R4.2/R6.1 through the router: complexity, budget pressure (``fraction`` of the
        budget used, when the caller read it already), health, capability floor
        (``info``: routing's view of the task, when the caller made it already;
        ``scopes``: the task's, when the caller read them already)."""
        if requested:
            return Route(requested, "requested by agent")
        if scopes is None:
            scopes = self.tracker.scopes(task.id)
        # once per call: the router and R3.2/3
        over = over_budget(scopes, self.router.catalog.tiers, need_tokens)
        if fraction is None:
            fraction = self.tracker.fraction_used(task.id, scopes)
        if info is None:
            info = task_info(task, hints) if hints else self.router.info(task)
        decision = self.router.choose(info, fraction, over_budget=over)  # info.priority
        signals = task.signals
        if signals.aggressive or signals.prefer_cheaper:  # a budget alert: maybe cheaper
            down = cheaper(task, self.router.catalog.tiers, self.health.usable, over,
                           decision.model, decision.downgraded)
            if down is not None:
                return self._routes.lowered(decision, *down)
        return self._routes.of(decision)  # the usual call: the router's decision as it is

    def _next_fallback(self, task: TaskHandle, model: str, skip: list[str]) -> str | None:
        """R6.1: where a failed call goes next — a usable substitute not skipped."""
        subs = self.router.catalog.substitutes(model, task.profile.task_type)
        return next_fallback(subs, self.health.usable(task.priority), model, skip)

    def over_budget(self, task: TaskHandle, tokens: int) -> frozenset[str]:
        """Tiers whose per-model token budget (any scope of the task) cannot take ``tokens``."""
        return over_budget(self.tracker.scopes(task.id), self.router.catalog.tiers, tokens)

    # 2 estimate ----------------------------------------------------------------------
    def estimated_cost(self, model: str, prompt_tokens: int, max_tokens: int) -> float:
        """``cost_usd`` of a call's estimate (per-token prices read once per config)."""
        return self._prices.cost(self.config, model, prompt_tokens, max_tokens)

    # 5 call --------------------------------------------------------------------------
    async def call(self, task: TaskHandle, model: str, request: CompletionRequest,
                   est: Estimate, reservation: Reservation, lease: Lease,
                   ) -> tuple[Completion, list[Crossing]]:
        """``request`` on the provider and its settle, in one scope: cancelled at the task's
        per-call limit (R1.3) while the provider has the call, shielded once it answered
        (the usage is paid).  One scope, not one for each."""
        started = self._clock()
        limit = task.profile.limits.call_time_s
        scope = self._call_limits.scope(started, limit)
        timeout: ProviderTimeoutError | None = None
        self._in_call[lease.id] = lease  # renewed while the call runs (R5.4)
        with scope:
            try:
                try:
                    completion = await self.provider.complete(request)
                finally:
                    self._in_call.pop(lease.id, None)
                    self._call_limits.ended(scope, limit)
            except BaseException as exc:  # failed, or cut off once it went out (R2.1)
                if limit and (isinstance(exc, TimeoutError) or scope.cancel_called):
                    timeout = ProviderTimeoutError(  # the limit (or the provider's own)
                        request.model, f"call exceeded the per-call limit of {limit:g} s",
                        cut_off=True)
                await self._failed(task, model, timeout or exc, started, est, reservation, lease)
                if timeout is None or not isinstance(exc, TimeoutError):
                    raise  # the limit's own cancellation ends here, at the scope
            else:
                done = self._clock()
                self.health.record_call(model, True, done - started,
                                        retries=completion.attempts - 1,
                                        at=done if self._health_clock else None)
                settle = self.settle(task, model, completion, est, reservation, lease)
                if not scope.cancel_called:  # (else the limit came as the answer did)
                    scope.shield = True
                    return completion, await settle
                with shield():
                    return completion, await settle
        raise timeout from None  # type: ignore[misc]  # set: only the limit ends up here

    # 6 settle ------------------------------------------------------------------------
    async def settle(self, task: TaskHandle, model: str, completion: Completion,
                     estimate: Estimate, reservation: Reservation,
                     lease: Lease | None = None) -> list[Crossing]:
        """Record what the provider reported first, then return the lease's unused tokens.
        The usage is charged whatever became of the lease (a pause or an expiry may have
        ended it while the call ran): a paid token is never lost."""
        usage, task_id, tracker = completion.usage, task.id, self.tracker
        cost, event_id = self._prices.actual(self.config, model, usage), reservation.event_id
        if completion.usage_missing:  # billed all the same: charged at its estimate
            usage, cost, event_id = unreported(self.bus, model, usage, cost, estimate, reservation,
                                               completion.stop_reason)
        event = tracker.make_event(  # the day that admitted it, the id its open_call names
            task_id, model=model, usage=usage, day=reservation.day, cost_usd=cost,
            event_id=event_id or None)
        crossings = await tracker.charge(event, reservation)
        if lease is not None and lease.active:  # an ended one gave its tokens back already
            try:  # noqa: SIM105 -- contextlib.suppress is three calls more per model call
                self.allocator.settle(lease.id, usage.prompt_tokens + usage.completion_tokens,
                                      output_tokens=usage.completion_tokens)
            except LeaseError:
                pass
        # R5.2: demotion above 50 % of the task's tokens
        self.allocator.set_token_fraction(task_id, tracker.token_fraction(task_id))
        if not completion.usage_missing:  # an estimate says nothing of the estimates
            self.counter.learn(estimate, usage.prompt_tokens + usage.cache_read_tokens
                               + usage.cache_write_5m_tokens + usage.cache_write_1h_tokens)
        task.calls += 1
        task.model = model
        for listener in self.on_settle.listeners:  # the hook, without its frame
            listener(task, event)
        return crossings

    # 7 signal ------------------------------------------------------------------------
    async def signal(self, task: TaskHandle, crossings: Sequence[Crossing]) -> None:
        """Apply the alert policy (R3) and mirror its flags onto the task handle."""
        if crossings:
            await self.alerts.apply(task.id, crossings)
        self.mirror(task)

    def mirror(self, task: TaskHandle) -> None:
        """:meth:`signal` without crossings (most calls': no coroutine to make and await)."""
        alerts, signals = self.alerts, task.signals
        if not alerts.flagged:  # no scope has flags (the usual case): the defaults
            signals.prefer_cheaper = signals.aggressive = False
            signals.alert_level = "ok"
            return
        task_id = task.id
        flags = alerts.flags(task_id)
        signals.prefer_cheaper = flags.prefer_cheaper
        signals.aggressive = flags.aggressive
        signals.alert_level = flags.indicator
        if alerts.consume_checkpoint_request(task_id):
            signals.checkpoint_requested = True

    async def ping(self, model: str) -> Completion:
        """R6.4: the cheap health-check completion (not charged to any task)."""
        return await self.provider.complete(ping_request(self.config, model))
