"""#23 OpenTelemetry traces (the ``otel`` extra): one span per governed call with the GenAI
semantic conventions and vibe's budget, lease-wait and routing attributes, children for
the lease wait and the provider call, the task attempt's span as parent — recorded by the
SDK's in-memory exporter on a real orchestrator run."""

from __future__ import annotations

import sys
from collections import defaultdict
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from scheduler.observe import TracedProvider
from scheduler.observe import _tracing as tracing_module
from scheduler.observe._tracing import _own_provider, tracing_wanted
from scheduler.runtime import Orchestrator
from tests._observe_helpers import demo_orchestrator

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """The application's SDK provider, installed once per process (OTel allows one)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


def _num(span: ReadableSpan, key: str) -> float:
    value = (span.attributes or {}).get(key, 0)
    assert isinstance(value, int | float)
    return float(value)


def _traced(tmp_path: Path, tasks: int = 4) -> Orchestrator:
    return demo_orchestrator(tmp_path, tasks=tasks, time_scale=0.002,
                             tracing={"enabled": True})


async def test_issue23_each_governed_call_is_a_genai_span(
        tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    """#23 (R2.1 usage, R5.4 leases, R4.2 routing): chat spans carry the provider's usage
    (their sums equal the store's), cost, budget fraction, lease wait and routing reason;
    each has a lease-wait and a provider-call child and a task span as parent."""
    orch = _traced(tmp_path)
    await orch.run()
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    children: dict[int, list[ReadableSpan]] = defaultdict(list)
    for s in spans:
        if s.parent is not None:
            children[s.parent.span_id].append(s)
    chats = [s for s in spans if s.name.startswith("chat ")]
    ok = [s for s in chats if "error.type" not in (s.attributes or {})]
    await orch.store.open()
    try:
        session = await orch.store.totals(f"session:{orch.session_id}")
    finally:
        await orch.store.aclose()
    assert len(ok) == session.calls > 4

    def total(key: str) -> float:
        return sum(_num(s, key) for s in ok)

    assert total("gen_ai.usage.output_tokens") == session.completion_tokens
    assert total("gen_ai.usage.input_tokens") == (
        session.prompt_tokens + session.cache_read_tokens + session.cache_write_tokens)
    assert total("vibe.cost_usd") == pytest.approx(session.cost_usd, abs=1e-9)
    for span in ok:
        a = span.attributes or {}
        assert span.kind is trace.SpanKind.CLIENT
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "vibe_engine.simulated"
        model_id = orch.config.model_spec(str(a["vibe.model.tier"])).model_id
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == model_id
        assert span.name == f"chat {model_id}"
        assert a["vibe.routing.reason"] and _num(span, "gen_ai.request.max_tokens") > 0
        assert 0 <= _num(span, "vibe.budget.fraction") <= 1.5
        assert _num(span, "vibe.lease.wait_s") >= 0
        kids = sorted(k.name.split(" ")[0] for k in children[span.context.span_id])
        assert kids == ["provider.call", "vibe.lease_wait"]
        assert span.parent is not None
        parent = by_id[span.parent.span_id]
        assert parent.name == f"vibe.task {a['vibe.task.id']!s}"
        assert (parent.attributes or {})["vibe.task.status"]
        assert parent.start_time is not None and span.start_time is not None
        assert parent.start_time <= span.start_time
    tasks = {s.name for s in spans if s.name.startswith("vibe.task ")}
    assert tasks == {f"vibe.task {t.id}" for t in orch.config.tasks}


async def test_issue23_tracing_off_wires_nothing(
        tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    """Off (the default): no wrapper on the call path, no span."""
    orch = demo_orchestrator(tmp_path, tasks=2, time_scale=0.002)
    gateway = orch.gateway
    assert gateway._attempt == gateway._complete_on
    assert gateway._lease == gateway.admission.lease
    assert not isinstance(gateway.provider, TracedProvider)
    await orch.run()
    assert exporter.get_finished_spans() == ()


async def test_issue23_runs_unchanged_without_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for but not installed: the run goes on untraced (one warning)."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    orch = _traced(tmp_path, tasks=2)
    assert not isinstance(orch.gateway.provider, TracedProvider)
    report = await orch.run()
    assert orch.gateway._attempt == orch.gateway._complete_on
    assert all(str(o.status) == "completed" for o in report.outcomes.values())


def test_issue23_exporter_from_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard variables: ``OTEL_TRACES_EXPORTER`` turns tracing on and picks each
    exporter by the SDK's entry point (``console`` is the SDK's own); an unknown one is
    skipped with a warning; ``OTEL_SDK_DISABLED`` wins."""
    assert tracing_wanted(False, {"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_wanted(False, {"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_wanted(True, {"OTEL_SDK_DISABLED": "true"})
    assert not tracing_wanted(False, {})
    assert entry_points(group="opentelemetry_traces_exporter", name="console")
    memory = InMemorySpanExporter()
    asked: list[tuple[str, str]] = []

    class Found:
        def load(self) -> Any:
            return lambda: memory

    def fake_entry_points(*, group: str, name: str) -> list[Found]:
        asked.append((group, name))
        return [Found()] if name == "console" else []

    monkeypatch.setattr(tracing_module, "entry_points", fake_entry_points)
    provider = _own_provider({"OTEL_TRACES_EXPORTER": "console,nosuch"})
    with provider.get_tracer("t").start_as_current_span("probe-span"):
        pass
    provider.shutdown()  # flushes the batch processor
    assert asked == [("opentelemetry_traces_exporter", "console"),
                     ("opentelemetry_traces_exporter", "nosuch")]
    [span] = memory.get_finished_spans()
    assert span.name == "probe-span"
    assert span.resource.attributes["service.name"] == "vibe-engine"
