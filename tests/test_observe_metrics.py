"""Prometheus metrics (SPEC "Observability"): a scrape during a run matches the store."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from scheduler import ConfigError, TaskSpec, Totals, config_from_dict
from scheduler.core import Event
from scheduler.observe._metrics import MeteredProvider, _is_deadlock_resolution
from scheduler.runtime import Orchestrator
from tests._observe_helpers import crafted_snapshot, demo_orchestrator

# the metrics endpoint is scraped over real HTTP
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str,
         **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == metric and all((k, val) in lab for k, val in labels.items()))


class Scraper:
    """An agent that scrapes the orchestrator's endpoint and reads the store, mid-run."""

    orch: Orchestrator
    seen: dict[str, Any] = {}

    async def run(self, ctx: Any) -> None:
        metrics = self.orch.observers.metrics
        assert metrics is not None and metrics.port is not None
        metrics.refresh()  # gauges lag up to refresh_s; counters are always current
        samples = await anyio.to_thread.run_sync(_scrape, metrics.port)
        Scraper.seen["samples"] = samples
        Scraper.seen["session"] = await self.orch.store.totals(f"session:{self.orch.session_id}")
        Scraper.seen["by_model"] = {
            m: await _model_totals(self.orch, m) for m in ("haiku", "sonnet", "opus")}


async def _model_totals(orch: Orchestrator, model: str) -> Totals:
    t = Totals()
    for e in await orch.store.events():
        if e.model == model and e.session_id == orch.session_id:
            t.add(e)
    return t


async def test_metrics_scraped_during_a_run_match_the_store(tmp_path: Path) -> None:
    """Tokens, cost and calls per model on the endpoint equal the store's totals mid-run."""
    orch = demo_orchestrator(tmp_path, tasks=10, time_scale=0.002,
                             metrics={"enabled": True, "port": 0})
    Scraper.orch = orch
    Scraper.seen = {}
    orch.agents["scraper"] = Scraper
    deps = tuple(t.id for t in orch.config.tasks)
    await orch.run([*orch.config.tasks,
                    TaskSpec(id="scrape", agent="scraper", depends_on=deps)])
    samples = Scraper.seen["samples"]
    session: Totals = Scraper.seen["session"]
    assert session.calls > 10
    assert _sum(samples, "vibe_calls_total", outcome="ok") == session.calls
    assert _sum(samples, "vibe_tokens_total") == session.tokens
    assert _sum(samples, "vibe_tokens_total", kind="prompt") == session.prompt_tokens
    assert _sum(samples, "vibe_tokens_total", kind="cache_read") == session.cache_read_tokens
    assert _sum(samples, "vibe_cost_usd_total") == pytest.approx(session.cost_usd, abs=1e-9)
    for model, t in Scraper.seen["by_model"].items():
        assert _sum(samples, "vibe_tokens_total", model=model) == t.tokens
        assert _sum(samples, "vibe_calls_total", model=model, outcome="ok") == t.calls
    assert _sum(samples, "vibe_tasks", state="completed") == 10
    assert _sum(samples, "vibe_tasks", state="running") == 1  # the scraper itself
    assert _sum(samples, "vibe_events_total", name="task_completed") == 10
    assert _sum(samples, "vibe_budget_fraction", scope="session", dimension="tokens") > 0
    assert _sum(samples, "vibe_lease_grants_total", pool="anthropic") >= session.calls  # R5.4
    assert _sum(samples, "vibe_queue_length", pool="anthropic") == 0
    assert _sum(samples, "vibe_model_health", model="haiku") == 1.0  # R6.3
    # failed provider calls (the simulated provider's overloads) are counted by error class
    failures = _sum(samples, "vibe_calls_total") - session.calls
    fallbacks = _sum(samples, "vibe_events_total", name="model_fallback")
    assert failures >= fallbacks


async def test_each_orchestrator_has_its_own_registry(tmp_path: Path) -> None:
    """Never the global registry: two orchestrators in one process keep separate counters."""
    a = demo_orchestrator(tmp_path / "a", tasks=1, metrics={"enabled": True, "port": 0})
    b = demo_orchestrator(tmp_path / "b", tasks=1, metrics={"enabled": True, "port": 0})
    ma, mb = a.observers.metrics, b.observers.metrics
    assert ma is not None and mb is not None and ma.registry is not mb.registry
    assert REGISTRY.get_sample_value("vibe_calls_total", {"model": "haiku",
                                                          "outcome": "ok"}) is None
    await a.run()
    assert b"vibe_calls_total" in ma.exposition()
    assert mb.registry.get_sample_value("vibe_calls_total",
                                        {"model": "haiku", "outcome": "ok"}) is None


async def test_gauges_from_crafted_snapshot(tmp_path: Path) -> None:
    """Queue length, leases, estimated waits and model health from a snapshot."""
    orch = demo_orchestrator(tmp_path, tasks=1, metrics={"enabled": True, "port": 0})
    m = orch.observers.metrics
    assert m is not None
    m.refresh(crafted_snapshot())
    get = m.registry.get_sample_value
    assert get("vibe_queue_length", {"pool": "anthropic"}) == 1
    assert get("vibe_leases_active", {"pool": "anthropic"}) == 3
    assert get("vibe_lease_estimated_wait_seconds_max", {"pool": "anthropic"}) == 3.5
    assert get("vibe_model_health", {"model": "opus"}) == 0.0
    assert get("vibe_model_health", {"model": "sonnet"}) == 0.5
    assert get("vibe_model_health", {"model": "haiku"}) == 1.0
    assert get("vibe_tasks", {"state": "paused"}) == 1


def test_deadlock_events_counted() -> None:
    """R5.7 notices count as resolved deadlocks; detection alone does not."""
    assert _is_deadlock_resolution(Event("deadlock_victim", 0.0, data={"victim": "t1"}))
    assert _is_deadlock_resolution(Event("deadlock_resolved", 0.0))
    assert not _is_deadlock_resolution(Event("deadlock_detected", 0.0))
    assert not _is_deadlock_resolution(Event("budget_warning", 0.0))


def test_metrics_config_is_loopback_only() -> None:
    """Metrics are served on a loopback address only; disabled by default."""
    cfg = config_from_dict({})
    assert cfg.metrics.enabled is False and cfg.metrics.host == "127.0.0.1"
    with pytest.raises(ConfigError, match="loopback"):
        config_from_dict({"metrics": {"host": "0.0.0.0"}})
    assert config_from_dict({"metrics": {"host": "::1"}}).metrics.host == "::1"


def test_metrics_class_is_not_created_when_disabled(tmp_path: Path) -> None:
    orch = demo_orchestrator(tmp_path, tasks=1)
    assert orch.observers.metrics is None
    assert not isinstance(orch.gateway.provider, MeteredProvider)
