"""What one governed call carries through its attempts: its route, its shared request
and the signal that replanning broke its task down (the gateway's records)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from policies.replan import BreakDown
from policies.routing import RouteDecision
from scheduler.budget import CACHE_WRITE_1H, CACHE_WRITE_5M, Estimate, Reservation
from scheduler.config import VibeConfig
from scheduler.core import (
    CompletionRequest,
    EventBus,
    Message,
    Passthrough,
    Provider,
    TextSink,
    Usage,
    VibeEngineError,
    thinking_budget,
)
from scheduler.core._provider import make_completion_request
from scheduler.tasks import TaskHandle


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes and why."""

    model: str
    reason: str
    fallback: str | None = None


#: The hints of a call given none: one read-only mapping, not an empty dict per call.
NO_HINTS: Mapping[str, Any] = MappingProxyType({})


class BreakDownRequested(VibeEngineError):
    """R6.2 mid-task: the task's model degraded and replanning says break it down.

    Raised by a routed call instead of running it on a tier too weak for the task; the
    orchestrator ends the attempt and runs the smaller parts in its place.
    """

    def __init__(self, task_id: str, decision: BreakDown) -> None:
        self.task_id = task_id
        self.decision = decision
        super().__init__(f"task {task_id} broken down mid-task: {decision.reason}")


@dataclass(slots=True)
class Call:
    """What every attempt of one call shares: output limits, streaming, hints, options.

    Not changed once made; not frozen, because a frozen dataclass sets each field through
    ``object.__setattr__``: four times the cost of making one, once per call."""

    max_tokens: int
    #: tokens reserved for the output: ``max_tokens``, or a larger thinking budget
    out: int
    stream: bool
    hints: Mapping[str, Any]
    options: Mapping[str, Any]
    on_text: TextSink | None
    passthrough: Passthrough | None
    # the request itself: held here rather than in a closure, whose cells, function and
    # coroutine frame every call waiting for a lease would hold as well
    task: TaskHandle
    messages: Sequence[Message]
    system: str
    context: str
    tools: Sequence[Mapping[str, Any]]
    #: the prompt's raw token count (counted once; each attempt calibrates it per model)
    raw_tokens: int
    #: the longest cache the request may write (``CACHE_WRITE_*``): its hold prices the
    #: prompt as that write (R2.4)
    cache: int


def output_limits(task: TaskHandle, max_tokens: int, opts: Mapping[str, Any]) -> (
    tuple[int, int]
):
    """The call's ``max_tokens`` (a broken-down part's limited scope, R6.2) and its output
    reservation: ``max_tokens``, or a thinking budget above it."""
    part_limit = task.spec.params.get("max_output_tokens")
    if part_limit:
        max_tokens = min(max_tokens, int(part_limit))
    return max_tokens, max(max_tokens, thinking_budget(opts)) if opts else max_tokens


def attempt_request(
    config: VibeConfig, task: TaskHandle, route: Route, messages: Sequence[Message],
    system: str, context: str, tools: Sequence[Mapping[str, Any]], call: Call,
) -> CompletionRequest:
    """The provider request of one attempt of ``call`` on ``route``."""
    # every field in ``CompletionRequest``'s order: model, model_id, messages, system,
    # tools, max_tokens, stream, task_id, hints, options, on_text, passthrough
    return make_completion_request(
        route.model, config.model_spec(route.model).model_id, messages,
        system + ("\n\n" + context if context else ""), tools, call.max_tokens, call.stream,
        task.id, call.hints, call.options, call.on_text, call.passthrough)


async def counted_by_api(provider: Provider, est: Estimate,
                         request: CompletionRequest) -> Estimate:
    """With ``provider.count_tokens = "api"`` (the caller checks): the provider's own count
    of ``request`` replaces the calibrated tiktoken one (the raw count still feeds
    calibration), when the provider can count."""
    count = getattr(provider, "count_tokens", None)
    if count is None:
        return est
    return Estimate(est.raw, int(await count(request)), est.model)


def ping_request(config: VibeConfig, model: str) -> CompletionRequest:
    """R6.4: the cheap health-check request on ``model`` (not charged to any task)."""
    return CompletionRequest(
        model=model, model_id=config.model_spec(model).model_id,
        messages=[{"role": "user", "content": "ping"}], max_tokens=1, task_id="health-check")


def cache_writes(counted: int, system_len: int, hints: Mapping[str, Any] | None,
                 passthrough: Passthrough | None, system_chars: int) -> int:
    """The longest cache a request may write: ``counted`` (the marks the token count
    met in its messages and tools), or its system prompt's -- a forwarded request's
    blocks or top-level ``cache_control`` (automatic caching), else what the provider
    adds (a ``cache_ttl`` hint, or a system prompt, context included, of ``system_chars``
    or more: 5 min)."""
    if counted == CACHE_WRITE_1H or (
            passthrough is None and not hints and system_len < system_chars):
        return counted  # most calls: nothing more to look at
    if passthrough is not None:
        body = passthrough.body
        marked = [body] if "cache_control" in body else []
        blocks = body.get("system")
        if isinstance(blocks, list):
            marked += [b for b in blocks if isinstance(b, Mapping) and "cache_control" in b]
        for block in marked:
            control = block["cache_control"]
            long = isinstance(control, Mapping) and control.get("ttl") == "1h"
            counted = max(counted, CACHE_WRITE_1H if long else CACHE_WRITE_5M)
        return counted
    ttl = hints.get("cache_ttl") if hints else None
    if ttl == "1h":
        return CACHE_WRITE_1H
    if ttl == "5m" or (ttl is None and system_len and system_len >= system_chars):
        return CACHE_WRITE_5M
    return counted


class Checkpoints(Protocol):
    """What saves a checkpoint its task was asked for (an agent's context)."""

    async def checkpoint_if_requested(self) -> bool: ...


class SharedTexts:
    """One copy of each text (a routing reason): the calls routed alike, most of a run's,
    share it rather than each waiting call holding its own (~200 B).  Bounded: when the
    texts keep differing (learned scores), the table starts again."""

    __slots__ = ("_texts",)

    #: How many distinct texts are kept.
    KEPT = 256

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}

    def shared(self, text: str) -> str:
        """The kept copy of ``text`` (``text`` itself, kept, the first time)."""
        texts = self._texts
        kept = texts.get(text)
        if kept is None:
            if len(texts) >= self.KEPT:
                texts.clear()
            kept = texts[text] = text
        return kept


class Routes:
    """One :class:`Route` per router decision, with one copy of each reason text: the
    router reuses a task's decision (and its policy one decision for calls routed alike),
    so most calls share a route rather than each making one and holding its reason.
    Bounded like :class:`SharedTexts`."""

    __slots__ = ("_routes", "_texts")

    def __init__(self) -> None:
        self._texts = SharedTexts()
        #: by the decision's id, kept with the decision so that id is not reused
        self._routes: dict[int, tuple[RouteDecision, Route]] = {}

    def of(self, decision: RouteDecision) -> Route:
        """The route of ``decision`` as it is."""
        found = self._routes.get(id(decision))
        if found is not None and found[0] is decision:
            return found[1]
        route = Route(decision.model, self._texts.shared(decision.reason), decision.fallback)
        if len(self._routes) >= SharedTexts.KEPT:
            self._routes.clear()
        self._routes[id(decision)] = (decision, route)
        return route

    def lowered(self, decision: RouteDecision, model: str, why: str) -> Route:
        """``decision`` moved to the cheaper ``model`` for ``why`` (a budget alert)."""
        return Route(model, self._texts.shared(f"{decision.reason} {why}"), decision.fallback)


#: Per-million prices to per-token ones, as ``cost_usd`` divides them.
_MTOK = 1_000_000.0


class Prices:
    """Per model, its output price per token and the input one (plain, and as a 5 min or
    1 h cache write), read once per config (the prices a config names never change): a
    call's estimated cost without a ``Usage`` made and the model's spec looked up per
    call."""

    def __init__(self) -> None:
        #: per model: output and input prices per token, the input one as a 5 min and a
        #: 1 h cache write (never held below the plain price), and the cache multipliers
        self._rates: dict[str, tuple[float, ...]] = {}
        self._of: VibeConfig | None = None

    def _rate(self, config: VibeConfig, model: str) -> tuple[float, ...]:
        if self._of is not config:
            self._rates, self._of = {}, config
        rate = self._rates.get(model)
        if rate is None:
            spec = config.model_spec(model)
            inp = spec.input_usd_per_mtok / _MTOK
            rate = self._rates[model] = (
                spec.output_usd_per_mtok / _MTOK, inp,
                inp * max(spec.cache_write_5m_multiplier, 1.0),
                inp * max(spec.cache_write_1h_multiplier, 1.0),
                spec.cache_read_multiplier, spec.cache_write_5m_multiplier,
                spec.cache_write_1h_multiplier)
        return rate

    def cost(self, config: VibeConfig, model: str, prompt_tokens: int,
             max_tokens: int, cache: int = 0) -> float:
        """The most ``prompt_tokens`` in and ``max_tokens`` out can be billed: with
        ``cache`` (``CACHE_WRITE_*``), every prompt token as that cache write (R2.4)."""
        rate = self._rates.get(model) if self._of is config else None
        if rate is None:
            rate = self._rate(config, model)
        return prompt_tokens * rate[1 + cache] + max_tokens * rate[0]

    def actual(self, config: VibeConfig, model: str, usage: Usage) -> float:
        """``cost_usd(usage, config.model_spec(model))``, the same sum in the same order
        (a charge's cost to the bit), from the prices read once."""
        rate = self._rates.get(model) if self._of is config else None
        if rate is None:
            rate = self._rate(config, model)
        inp = rate[1]
        return (usage.prompt_tokens * inp + usage.completion_tokens * rate[0]
                + usage.cache_read_tokens * inp * rate[4]
                + usage.cache_write_5m_tokens * inp * rate[5]
                + usage.cache_write_1h_tokens * inp * rate[6])


#: The bus event of a call charged at its estimate because its answer reported no usage.
USAGE_ESTIMATED = "usage_estimated"


#: The ``stop_reason`` of a call cut off after it went out (an abort, the per-call limit).
CUT_OFF = "cut_off"


def unreported(bus: EventBus, model: str, reported: Usage, cost: float, estimate: Estimate,
               reservation: Reservation, stop_reason: str = "") -> tuple[Usage, float, str]:
    """What a call whose answer reported no usage is charged, its cost and event id: the
    provider billed it all the same, so what it was admitted for -- the calibrated prompt
    estimate and all the output it could have produced, at the cost held for them -- on
    top of ``reported`` (at ``cost``; failed attempts before it).  Marked as an open call
    charged after a crash is (``<event id>:estimate``, see ``budget._open_calls``);
    ``stop_reason`` :data:`CUT_OFF`: the call was cut off after it went out, so no answer came."""
    prompt, task_id = estimate.calibrated, reservation.task_id
    usage = Usage(prompt, max(reservation.tokens - prompt, 0)) + reported
    what = "was cut off after it went out" if stop_reason == CUT_OFF else "reported no usage"
    bus.emit(USAGE_ESTIMATED, f"a call of task {task_id} on {model} {what}: charged at its "
             f"estimate ({usage.total_tokens} tokens)",
             task_id=task_id, level="warning", model=model, tokens=usage.total_tokens,
             cost_usd=reservation.cost_usd + cost)
    return usage, reservation.cost_usd + cost, f"{reservation.event_id}:estimate"
