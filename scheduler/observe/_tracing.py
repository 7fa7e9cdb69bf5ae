"""OpenTelemetry traces of governed calls (the optional ``otel`` extra).

When tracing is on (``tracing.enabled``, or ``OTEL_TRACES_EXPORTER`` set to an
exporter), every governed model call is one span with the GenAI semantic
conventions (``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` …) and vibe's own
attributes (``vibe.budget.fraction``, ``vibe.lease.wait_s``,
``vibe.routing.reason``…).  Its children are the lease wait and the provider
call; its parent is the task attempt's span.  The composition root wires the
spans through the gateway's :meth:`~scheduler.runtime.Gateway.instrument` seam,
a provider wrapper, ``on_settle`` and ``on_release`` — and wires nothing when
tracing is off, so a plain run does no per-call work for it.

Which tracer provider: the application's, when it installed an SDK
``TracerProvider`` globally; otherwise one of the run's own, exporting through
the exporters that ``OTEL_TRACES_EXPORTER`` names (the SDK's standard entry
points: ``otlp``, ``console`` …), flushed and shut down when the run ends.
Without the extra installed the run goes on untraced, with one warning.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import anyio

from scheduler.core import Completion, CompletionRequest, Provider, UsageEvent, get_logger
from scheduler.observe._view import RunView
from scheduler.tasks import TaskHandle

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["TracedProvider", "Tracing", "build_tracing", "tracing_wanted"]

_log = get_logger("vibe_engine.tracing")

AsyncFn = Callable[..., Awaitable[Any]]
PROVIDER_NAMES = {"anthropic": "anthropic", "simulated": "vibe_engine.simulated"}


def tracing_wanted(enabled: bool, env: Mapping[str, str] | None = None) -> bool:
    """On when the config asks, or when ``OTEL_TRACES_EXPORTER`` names an exporter;
    ``OTEL_SDK_DISABLED=true`` turns it off (the SDK's own switch)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return enabled or exporters not in ("", "none")


def _own_provider(env: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "vibe-engine"}
    provider = TracerProvider(resource=Resource.create(attributes))
    names = env.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp"  # the spec's default
    for name in (n.strip() for n in names.split(",")):
        if name in ("", "none"):
            continue
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            _log.warning("tracing_exporter_unavailable", exporter=name,
                         hint=f"install the package that provides the {name!r} exporter")
            continue
        exporter_class = next(iter(found)).load()
        provider.add_span_processor(BatchSpanProcessor(exporter_class()))
    return provider


def build_tracing(view: RunView, env: Mapping[str, str] | None = None) -> Tracing | None:
    """The run's :class:`Tracing`, or ``None`` when off or the extra is not installed."""
    env = os.environ if env is None else env
    if not tracing_wanted(view.config.tracing.enabled, env):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        _log.warning("tracing_unavailable",
                     hint="pip install 'vibe-engine[otel]' to export traces")
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return Tracing(view, current, owned=False)
    return Tracing(view, _own_provider(env), owned=True)


class TracedProvider:
    """Wraps the provider: each call is a ``provider.call`` child span."""

    def __init__(self, inner: Provider, tracing: Tracing) -> None:
        self.inner = inner
        self._tracing = tracing

    async def complete(self, request: CompletionRequest) -> Completion:
        with self._tracing.tracer.start_as_current_span(
                f"provider.call {request.model_id}",
                attributes={"gen_ai.request.model": request.model_id}) as span:
            completion = await self.inner.complete(request)
            span.set_attribute("vibe.provider.attempts", completion.attempts)
            return completion

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Tracing:
    """Spans of one run: task attempts, governed calls, lease waits, provider calls."""

    def __init__(self, view: RunView, provider: TracerProvider, *, owned: bool) -> None:
        from opentelemetry.trace import SpanKind

        self.view = view
        self.provider = provider
        self.owned = owned
        self.tracer: Tracer = provider.get_tracer("vibe-engine")
        self._client = SpanKind.CLIENT
        self._tasks: dict[str, tuple[Span, Context]] = {}
        self._system = PROVIDER_NAMES.get(view.config.provider.kind, view.config.provider.kind)
        view.on_settle.connect(self.on_settle)

    # -- task spans ---------------------------------------------------------------------

    def _task_context(self, task: TaskHandle) -> Context:
        """The context whose current span is the task attempt's (made at its first call)."""
        found = self._tasks.get(task.id)
        if found is None:
            from opentelemetry import trace

            span = self.tracer.start_span(f"vibe.task {task.id}", attributes={
                "vibe.task.id": task.id, "vibe.agent": task.spec.agent,
                "vibe.task.attempt": task.attempt, "vibe.task.priority": str(task.priority)})
            found = self._tasks[task.id] = (span, trace.set_span_in_context(span))
        return found[1]

    async def end_task(self, task: TaskHandle) -> None:
        """``on_release``: the attempt ended; its span closes with the task's status."""
        found = self._tasks.pop(task.id, None)
        if found is not None:
            found[0].set_attribute("vibe.task.status", str(task.status))
            found[0].end()

    # -- call spans ---------------------------------------------------------------------

    def wrap_attempt(self, attempt: AsyncFn) -> AsyncFn:
        """One governed call attempt → a ``chat {model}`` span under the task's span."""
        from opentelemetry.trace import Status, StatusCode

        async def traced(task: TaskHandle, route: Any, *args: Any) -> Any:
            model_id = self.view.config.model_spec(route.model).model_id
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat", "gen_ai.system": self._system,
                "gen_ai.provider.name": self._system, "gen_ai.request.model": model_id,
                "vibe.task.id": task.id, "vibe.model.tier": route.model,
                "vibe.routing.reason": route.reason}
            max_tokens = getattr(args[-1], "max_tokens", None) if args else None
            if isinstance(max_tokens, int):
                attributes["gen_ai.request.max_tokens"] = max_tokens
            with self.tracer.start_as_current_span(
                    f"chat {model_id}", context=self._task_context(task), kind=self._client,
                    attributes=attributes, record_exception=False,
                    set_status_on_exception=False) as span:
                try:
                    completion = await attempt(task, route, *args)
                except BaseException as exc:
                    span.set_attribute("error.type", type(exc).__name__)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
                self._answered(span, task, model_id, completion)
                return completion

        return traced

    def _answered(self, span: Span, task: TaskHandle, model_id: str,
                  completion: Completion) -> None:
        u = completion.usage
        span.set_attributes({
            "gen_ai.response.model": model_id,
            "gen_ai.response.finish_reasons": [completion.stop_reason],
            "gen_ai.usage.input_tokens": u.prompt_tokens + u.cache_read_tokens
            + u.cache_write_tokens,
            "gen_ai.usage.output_tokens": u.completion_tokens,
            "gen_ai.usage.cache_read.input_tokens": u.cache_read_tokens,
            "gen_ai.usage.cache_creation.input_tokens": u.cache_write_tokens,
            "vibe.budget.fraction": self.view.tracker.fraction_used(task.id),
        })
        if completion.id:
            span.set_attribute("gen_ai.response.id", completion.id)

    def wrap_lease(self, lease: AsyncFn) -> AsyncFn:
        """The lease step → a ``vibe.lease_wait`` child span; the wait also lands on the
        call's span as ``vibe.lease.wait_s``."""
        from opentelemetry import trace

        async def traced(task: TaskHandle, tokens: int, model: str) -> Any:
            call_span = trace.get_current_span()
            started = anyio.current_time()
            with self.tracer.start_as_current_span(
                    "vibe.lease_wait", attributes={"vibe.lease.tokens": tokens}) as span:
                try:
                    return await lease(task, tokens, model)
                finally:
                    waited = anyio.current_time() - started
                    span.set_attribute("vibe.lease.wait_s", waited)
                    call_span.set_attribute("vibe.lease.wait_s", waited)

        return traced

    def on_settle(self, task: TaskHandle, event: UsageEvent) -> None:
        """Settling runs inside the call's span: its cost lands there."""
        from opentelemetry import trace

        trace.get_current_span().set_attribute("vibe.cost_usd", event.cost_usd)

    # -- service ------------------------------------------------------------------------

    async def run(self) -> None:
        """Closes spans of attempts still open and flushes (and shuts down its own
        provider) when the run ends."""
        try:
            await anyio.sleep_forever()
        finally:
            for span, _ in self._tasks.values():
                span.end()
            self._tasks.clear()
            with anyio.CancelScope(shield=True):
                if self.owned:
                    await anyio.to_thread.run_sync(self.provider.shutdown)
                else:
                    await anyio.to_thread.run_sync(self.provider.force_flush)
