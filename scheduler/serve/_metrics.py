"""Per-key Prometheus metrics of ``vibe-engine serve`` (#21), beside the run's own.

Registered in the orchestrator's metrics registry (``metrics.enabled``), so the one
endpoint serves them: requests by key and outcome, and tokens and cost by key.
"""

from __future__ import annotations

from prometheus_client import Counter

from scheduler.core import UsageEvent
from scheduler.runtime import Orchestrator
from scheduler.tasks import TaskHandle


class ServeMetrics:
    """Counters of proxied traffic per client key."""

    def __init__(self, orchestrator: Orchestrator, keys: set[str]) -> None:
        metrics = orchestrator.observers.metrics
        self._keys = keys
        self.enabled = metrics is not None
        if metrics is None:
            return
        r = metrics.registry
        self.requests = Counter("vibe_serve_requests", "Proxied requests by key and outcome.",
                                ["key", "outcome"], registry=r)
        self.tokens = Counter("vibe_serve_tokens", "Tokens charged to a client key, by kind.",
                              ["key", "kind"], registry=r)
        self.cost = Counter("vibe_serve_cost_usd", "Cost charged to a client key in USD.",
                            ["key"], registry=r)
        orchestrator.gateway.on_settle.connect(self.on_settle)

    def on_settle(self, task: TaskHandle, event: UsageEvent) -> None:
        if task.id not in self._keys:
            return
        u = event.usage
        for kind, n in (("prompt", u.prompt_tokens), ("completion", u.completion_tokens),
                        ("cache_read", u.cache_read_tokens),
                        ("cache_write", u.cache_write_tokens)):
            self.tokens.labels(task.id, kind).inc(n)
        self.cost.labels(task.id).inc(event.cost_usd)

    def request(self, key: str, outcome: str) -> None:
        """One request: ``ok``, ``refused`` (budget, hold, bad request), ``error``, or
        ``left`` (the client disconnected while it waited)."""
        if self.enabled:
            self.requests.labels(key, outcome).inc()
