"""What observing costs per governed call: metrics and OpenTelemetry tracing.

``python -m benchmarks.observe --json [--quick]``

* ``instrumentation_us_per_call``: the per-call work each option adds, measured
  exactly — one "call" (lease step, provider call, settle hook, inside the
  attempt) on no-op parts, wrapped the way the composition root wraps them:
  ``none`` (the plain path: what an untraced, unmetered run does),
  ``metrics`` (counters, histograms, the lease-wait and provider wrappers) and
  ``tracing`` (the call, lease-wait and provider spans and their attributes, on
  the SDK tracer provider with an exporter that drops spans: span creation and
  processing, not export);
* ``us_per_call``: end to end — ``qa`` tasks (one model call each) on the
  simulated provider, a memory store and virtual time, with nothing observed
  (``baseline``), ``metrics`` (textfile, no port) and ``tracing``; run wall
  time ÷ calls.  Dominated by the rest of the runtime (``usage.json`` writes …),
  so the ratios are within noise; ``ratio_to_baseline`` compares with the
  baseline of the same run.

Each figure is the median over repetitions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from timeit import default_timer
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from agents import discover_agents, make_provider
from benchmarks._common import emit, median_of, parse_args, progress
from scheduler import Completion, CompletionRequest, Limits, TaskSpec, Usage, VibeConfig
from scheduler.observe import TracedProvider, Tracing, configure_logging
from scheduler.observe._metrics import MeteredProvider
from scheduler.runtime import Orchestrator
from scheduler.testing import run_virtual


class _Discard(SpanExporter):
    """Exports by dropping: the figure is span creation and processing, without the memory
    an in-memory exporter would grow by over thousands of calls."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


EXPORTER = _Discard()


def _config(state: Path, tasks: int, variant: str) -> VibeConfig:
    extra: dict[str, Any] = {}
    if variant == "metrics":
        extra["metrics"] = {"textfile": str(state / "m.prom")}
    if variant == "tracing":
        extra["tracing"] = {"enabled": True}
    return VibeConfig.model_validate({
        "state_dir": str(state), "store": "memory",
        "budgets": {"session": Limits().model_dump(), "day": Limits().model_dump()},
        "provider": {"simulated": {"time_scale": 0.0}},
        "observe": {"status_interval_s": None, "history": False},
        "tasks": [TaskSpec(id=f"q{i:04d}", agent="qa", prompt=f"question {i}?").model_dump()
                  for i in range(tasks)],
        **extra,
    })


def _us_per_call(tasks: int, variant: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp), tasks, variant)
        orch = Orchestrator(config, provider=make_provider(config), agents=discover_agents())
        start = default_timer()
        report = run_virtual(orch.run)
        elapsed = default_timer() - start
        calls = report.total.calls
        return elapsed / max(calls, 1) * 1e6


class _Route:
    model, reason = "haiku", "benchmark"


class _NoopProvider:
    def __init__(self, completion: Completion) -> None:
        self.completion = completion

    async def complete(self, request: CompletionRequest) -> Completion:
        return self.completion

    async def aclose(self) -> None:
        return None


def _instrumented_call(orch: Orchestrator, variant: str) -> Any:
    """One call's steps on no-op parts, wrapped as the composition root wraps them."""
    completion = Completion("x", Usage(100, 50), "haiku")
    handle = orch.handles["q0000"]
    event = orch.tracker.make_event(handle.id, model="haiku", usage=completion.usage,
                                    cost_usd=0.001)
    request = CompletionRequest("haiku", "claude-haiku", [{"role": "user", "content": "x"}])
    provider: Any = _NoopProvider(completion)

    async def lease(task: Any, tokens: int, model: str) -> None:
        return None

    def settle(task: Any, ev: Any) -> None:
        return None

    lease_fn: Any = lease
    settle_fn: Any = settle
    if variant == "metrics":
        m = orch.observers.metrics
        assert m is not None
        lease_fn, settle_fn = m.wrap_lease(lease), m.on_settle
        provider = MeteredProvider(provider, m.on_failure, m.on_duration)
    elif variant == "tracing":
        t = Tracing(orch.parts.view, trace.get_tracer_provider(), owned=False)  # type: ignore[arg-type]
        lease_fn, settle_fn = t.wrap_lease(lease), t.on_settle
        provider = TracedProvider(provider, t)

    async def attempt(task: Any, route: Any) -> Completion:
        await lease_fn(task, 150, "haiku")
        got: Completion = await provider.complete(request)
        settle_fn(task, event)
        return got

    if variant == "tracing":
        return t.wrap_attempt(attempt), handle
    return attempt, handle


def _instrumentation_us(variant: str, n: int) -> float:
    async def main() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            config = _config(Path(tmp), 1, variant)
            orch = Orchestrator(config, provider=make_provider(config),
                                agents=discover_agents())
            await orch.open()
            try:
                [h] = orch.add_tasks(list(config.tasks))
                await orch.tracker.start_task(h.id, h.profile, agent="qa")
                call, handle = _instrumented_call(orch, variant)
                start = default_timer()
                for _ in range(n):
                    await call(handle, _Route())
                return (default_timer() - start) / n * 1e6
            finally:
                await orch.aclose()

    return run_virtual(main)


def main() -> None:
    args = parse_args(__doc__ or "")
    tasks = 100 if args.quick else 500
    repeat = args.repeat or (3 if args.quick else 5)
    configure_logging(level="error")  # log lines would dominate the per-call figure
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    results: dict[str, Any] = {"instrumentation_us_per_call": {}, "us_per_call": {},
                               "ratio_to_baseline": {}}
    calls = 2_000 if args.quick else 20_000
    for variant in ("none", "metrics", "tracing"):
        progress(f"observe: instrumentation {variant}, {calls} calls × {repeat}")
        results["instrumentation_us_per_call"][variant] = round(median_of(
            lambda v=variant: _instrumentation_us(v, calls), repeat), 2)  # type: ignore[misc]
    for variant in ("baseline", "metrics", "tracing"):
        progress(f"observe: {variant}, {tasks} tasks × {repeat}")
        results["us_per_call"][variant] = round(
            median_of(lambda v=variant: _us_per_call(tasks, v), repeat), 1)  # type: ignore[misc]
    base = results["us_per_call"]["baseline"]
    for variant in ("metrics", "tracing"):
        results["ratio_to_baseline"][variant] = round(results["us_per_call"][variant] / base, 3)
    emit("observe", {"tasks": tasks, "calls": calls, "repeat": repeat}, results,
         ("prometheus-client", "opentelemetry-sdk", "anyio", "trio"), args.json)


if __name__ == "__main__":
    main()
