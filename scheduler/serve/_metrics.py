"""Per-key Prometheus metrics of ``vibe-engine serve`` (#21), beside the run's own.

Registered in the orchestrator's metrics registry (``metrics.enabled``), so the one
endpoint serves them: requests by key and outcome, and tokens and cost by key.
"""

from __future__ import annotations

from typing import Any

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
        self._outcomes: dict[tuple[str, str], Any] = {}
        self._by_key: dict[str, tuple[tuple[Any, ...], Any]] = {}
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
        tokens, cost = self._series(task.id)
        for child, n in zip(tokens, (u.prompt_tokens, u.completion_tokens, u.cache_read_tokens,
                                     u.cache_write_tokens), strict=True):
            child.inc(n)
        cost.inc(event.cost_usd)

    def request(self, key: str, outcome: str) -> None:
        """One request: ``ok``, ``refused`` (budget, hold, bad request), ``error``, or
        ``left`` (the client disconnected while it waited)."""
        if self.enabled:
            child = self._outcomes.get((key, outcome))
            if child is None:
                child = self._outcomes[key, outcome] = self.requests.labels(key, outcome)
            child.inc()

    def _series(self, key: str) -> tuple[tuple[Any, ...], Any]:
        """A key's token series (in :data:`_KINDS`' order) and cost series, looked up
        once: ``labels()`` takes a lock and builds its key on every call."""
        found = self._by_key.get(key)
        if found is None:
            found = self._by_key[key] = (
                tuple(self.tokens.labels(key, kind) for kind in _KINDS), self.cost.labels(key))
        return found


_KINDS = ("prompt", "completion", "cache_read", "cache_write")
