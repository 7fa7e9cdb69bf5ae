"""Prometheus metrics of one orchestrator, served on a loopback port.

Each orchestrator owns its own :class:`prometheus_client.CollectorRegistry`
(never the process-global one), so two orchestrators in one process — or a
test suite — never share counters.  Where the figures come from:

=============================================  ===========================================
metric                                         source
=============================================  ===========================================
``vibe_tokens_total{model,kind}``              gateway settle hook (the store's usage)
``vibe_cost_usd_total{model}``                 gateway settle hook
``vibe_calls_total{model,outcome}``            settle (``ok``) and failed provider calls
``vibe_events_total{name}``                    every event on the bus
``vibe_deadlocks_resolved_total``              bus events ``deadlock_*`` naming a victim
``vibe_tasks{state}``                          snapshot (running, waiting, paused …)
``vibe_queue_length{pool}``                    allocator statistics: waiting requests
``vibe_leases_active{pool}``                   allocator statistics
``vibe_lease_wait_seconds_max{pool}``          longest current wait for a lease
``vibe_lease_estimated_wait_seconds_max{pool}`` longest estimated wait (R5.5)
``vibe_lease_grants{pool}`` / ``_expired``     allocator counters (gauges of its totals)
``vibe_model_health{model}``                   1 available, 0.5 recovering, 0 unavailable
``vibe_model_error_rate{model}``               health statistics
``vibe_budget_fraction{scope,dimension}``      session and day budget use
=============================================  ===========================================

Counters change in the event loop's thread; gauges are refreshed there after a
change (an event or a settled call), at most every ``refresh_s``; the HTTP
server thread only reads prometheus' own locked values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import start_http_server

from scheduler.core import Completion, CompletionRequest, Event, Provider, UsageEvent, get_logger
from scheduler.observe._snapshot import HEALTH_VALUE, Snapshot
from scheduler.observe._view import RunView, snapshot_of, watch_changes
from scheduler.tasks import TaskHandle

__all__ = ["MeteredProvider", "Metrics"]

_log = get_logger("vibe_engine.metrics")

CallOutcome = Callable[[str, str], None]


class MeteredProvider:
    """Wraps a provider to count failed calls by error class (successes count at settle)."""

    def __init__(self, inner: Provider, on_failure: CallOutcome) -> None:
        self.inner = inner
        self._on_failure = on_failure

    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            return await self.inner.complete(request)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            self._on_failure(request.model, type(exc).__name__)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _is_deadlock_resolution(event: Event) -> bool:
    return event.name.startswith("deadlock") and (
        "victim" in event.name or "resolved" in event.name or "victim" in event.data
    )


class Metrics:
    """Counters and gauges of one orchestrator, and the loopback HTTP endpoint."""

    def __init__(self, view: RunView, *, refresh_s: float = 0.25) -> None:
        self.view = view
        self.refresh_s = refresh_s
        self.registry = CollectorRegistry()
        self.port: int | None = None
        r = self.registry
        self.tokens = Counter("vibe_tokens", "Tokens charged, by model and kind.",
                              ["model", "kind"], registry=r)
        self.cost = Counter("vibe_cost_usd", "Cost charged in USD, by model.", ["model"],
                            registry=r)
        self.calls = Counter("vibe_calls", "Model calls by model and outcome.",
                             ["model", "outcome"], registry=r)
        self.events = Counter("vibe_events", "Runtime events by name.", ["name"], registry=r)
        self.deadlocks = Counter("vibe_deadlocks_resolved", "Deadlocks resolved (victims).",
                                 registry=r)
        self._gauges = {
            name: Gauge(name, doc, labels, registry=r)
            for name, doc, labels in (
                ("vibe_tasks", "Tasks by state.", ["state"]),
                ("vibe_queue_length", "Requests waiting for a lease.", ["pool"]),
                ("vibe_leases_active", "Leases held.", ["pool"]),
                ("vibe_lease_wait_seconds_max", "Longest current wait for a lease.", ["pool"]),
                ("vibe_lease_estimated_wait_seconds_max", "Longest estimated wait.", ["pool"]),
                ("vibe_lease_grants", "Leases granted so far.", ["pool"]),
                ("vibe_lease_expired", "Leases expired so far.", ["pool"]),
                ("vibe_model_health", "1 available, 0.5 recovering, 0 unavailable.", ["model"]),
                ("vibe_model_error_rate", "Recent error rate.", ["model"]),
                ("vibe_budget_fraction", "Budget used / limit.", ["scope", "dimension"]),
            )
        }
        view.on_settle.connect(self.on_settle)
        view.bus.subscribe(self.on_event)
        self._changes = watch_changes(view)

    # -- feeds ------------------------------------------------------------------------

    def on_settle(self, task: TaskHandle, event: UsageEvent) -> None:
        u, model = event.usage, event.model
        for kind, n in (("prompt", u.prompt_tokens), ("completion", u.completion_tokens),
                        ("cache_read", u.cache_read_tokens),
                        ("cache_write", u.cache_write_tokens)):
            self.tokens.labels(model, kind).inc(n)
        self.cost.labels(model).inc(event.cost_usd)
        self.calls.labels(model, "ok").inc()

    def on_failure(self, model: str, error: str) -> None:
        self.calls.labels(model, error).inc()

    def on_event(self, event: Event) -> None:
        self.events.labels(event.name).inc()
        if _is_deadlock_resolution(event):
            self.deadlocks.inc()

    def refresh(self, snap: Snapshot | None = None) -> None:
        """Set every gauge from a snapshot (in the event loop's thread)."""
        snap = snap or snapshot_of(self.view, now=anyio.current_time(), events=0)
        g = self._gauges
        for gauge in g.values():
            gauge.clear()
        for state, n in snap.counts().items():
            g["vibe_tasks"].labels(state).set(n)
        waits: dict[str, list[float]] = {}
        for t in snap.tasks:
            if t.pool is not None and t.estimated_wait_s is not None:
                waits.setdefault(t.pool, []).append(t.estimated_wait_s)
        for p in snap.pools:
            g["vibe_queue_length"].labels(p.name).set(p.waiting)
            g["vibe_leases_active"].labels(p.name).set(p.leases)
            g["vibe_lease_grants"].labels(p.name).set(p.grants)
            g["vibe_lease_expired"].labels(p.name).set(p.expired)
            g["vibe_lease_estimated_wait_seconds_max"].labels(p.name).set(
                max(waits.get(p.name, [0.0])))
        for pool, waited in self._waited().items():
            g["vibe_lease_wait_seconds_max"].labels(pool).set(waited)
        for m in snap.models:
            g["vibe_model_health"].labels(m.model).set(HEALTH_VALUE.get(m.state, 0.0))
            g["vibe_model_error_rate"].labels(m.model).set(m.error_rate)
        for b in snap.budgets:
            g["vibe_budget_fraction"].labels(b.scope.split(":")[0], b.dimension).set(b.fraction)

    def _waited(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for w in self.view.allocator.statistics().waiters:
            out[w.pool] = max(out.get(w.pool, 0.0), float(w.waited_s))
        return out

    def exposition(self) -> bytes:
        """The text format a scrape returns."""
        return bytes(generate_latest(self.registry))

    # -- service ----------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.view.config.metrics
        try:
            server, thread = start_http_server(cfg.port, addr=cfg.host, registry=self.registry)
        except OSError as exc:
            _log.warning("metrics_unavailable", host=cfg.host, port=cfg.port, error=str(exc))
            return
        self.port = int(server.server_port)
        self.view.bus.emit("metrics_listening", f"metrics on http://{cfg.host}:{self.port}/",
                           host=cfg.host, port=self.port)
        try:
            while True:
                await self._changes.wait()
                start = anyio.current_time()
                self.refresh()
                await anyio.sleep(max(self.refresh_s, 20 * (anyio.current_time() - start)))
        finally:
            self.refresh()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.shutdown)
                server.server_close()
                thread.join()
