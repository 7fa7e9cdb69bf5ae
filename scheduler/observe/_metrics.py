"""Prometheus metrics of one orchestrator, served on a loopback port (and/or written to a
node_exporter textfile when the run ends).

Each orchestrator owns its own :class:`prometheus_client.CollectorRegistry`
(never the process-global one), so two orchestrators in one process — or a
test suite — never share counters.  The names follow Prometheus' conventions:
counters end in ``_total``, durations are ``_seconds`` histograms, gauges say
what they measure now.  docs/observability.md lists every metric (a test
compares that table with what the endpoint serves).  Where the figures come from:

* the gateway's settle hook: ``vibe_tokens_total``, ``vibe_cost_usd_total``,
  ``vibe_calls_total{outcome="ok"}`` and the per-task ``vibe_task_*_total``;
* :class:`MeteredProvider` around the provider: failed calls by error class and
  ``vibe_call_duration_seconds``;
* the gateway's lease seam (:meth:`Metrics.wrap_lease`): ``vibe_lease_wait_seconds``;
* the event bus: ``vibe_events_total``, ``vibe_deadlocks_resolved_total`` and
  ``vibe_paused_seconds`` (``task_paused`` → ``decision_applied``);
* the snapshot (refreshed after a change, at most every ``refresh_s``): the gauges
  (``vibe_task_budget_fraction{task}`` among them) and the allocator's lease grant and
  expiry totals (``vibe_lease_*_total``).

Counters change in the event loop's thread; the HTTP server thread only reads
prometheus' own locked values.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    write_to_textfile,
)
from prometheus_client.exposition import start_http_server

from scheduler.core import Completion, CompletionRequest, Event, Provider, UsageEvent, get_logger
from scheduler.observe._snapshot import HEALTH_VALUE, Snapshot
from scheduler.observe._view import RunView, snapshot_of, watch_changes
from scheduler.tasks import TaskHandle

__all__ = ["LeaseFn", "MeteredProvider", "Metrics"]

_log = get_logger("vibe_engine.metrics")

CallOutcome = Callable[[str, str], None]
CallDuration = Callable[[str, float], None]
#: The gateway's lease step: ``(task, tokens, model) -> lease``.
LeaseFn = Callable[..., Awaitable[Any]]

#: Bucket bounds (seconds): model calls take 0.1 s to minutes; lease waits are ~0 unless
#: a pool is contended; a pause lasts until a person answers (minutes to a day).
CALL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LEASE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
PAUSE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)


class MeteredProvider:
    """Wraps a provider to time every call and count failed ones by error class, and
    cancelled ones (a deadline, a deadlock victim) as ``cancelled`` (successes count at
    settle, where their usage is known: ``ok`` counts every charged call, so a failed
    or cut-off call that was charged counts there too)."""

    def __init__(self, inner: Provider, on_failure: CallOutcome,
                 on_duration: CallDuration | None = None) -> None:
        self.inner = inner
        self._on_failure = on_failure
        self._on_duration = on_duration

    async def complete(self, request: CompletionRequest) -> Completion:
        started = anyio.current_time()
        try:
            return await self.inner.complete(request)
        except anyio.get_cancelled_exc_class():
            self._on_failure(request.model, "cancelled")
            raise
        except Exception as exc:
            self._on_failure(request.model, type(exc).__name__)
            raise
        finally:
            if self._on_duration is not None:
                self._on_duration(request.model, anyio.current_time() - started)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _is_deadlock_resolution(event: Event) -> bool:
    return event.name.startswith("deadlock") and (
        "victim" in event.name or "resolved" in event.name or "victim" in event.data
    )


_GAUGES = (
    ("vibe_tasks", "Tasks by state.", ["state"]),
    ("vibe_queue_length", "Requests waiting for a lease.", ["pool"]),
    ("vibe_leases_active", "Leases held.", ["pool"]),
    ("vibe_lease_wait_seconds_max", "Longest current wait for a lease.", ["pool"]),
    ("vibe_lease_estimated_wait_seconds_max", "Longest estimated wait.", ["pool"]),
    ("vibe_model_health", "1 available, 0.5 recovering, 0 unavailable.", ["model"]),
    ("vibe_model_error_rate", "Recent error rate.", ["model"]),
    ("vibe_budget_fraction", "Budget used / limit.", ["scope", "dimension"]),
    ("vibe_task_budget_fraction", "A task's budget used / limit (its worst dimension).",
     ["task"]),
)


class Metrics:
    """Counters, histograms and gauges of one orchestrator, and the loopback endpoint."""

    def __init__(self, view: RunView, *, refresh_s: float = 0.25) -> None:
        self.view = view
        self.refresh_s = refresh_s
        self.registry = CollectorRegistry()
        self.port: int | None = None
        self.per_task = view.config.metrics.task_labels
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
        self.grants = Counter("vibe_lease_grants", "Leases granted.", ["pool"], registry=r)
        self.expired = Counter("vibe_lease_expired", "Leases that expired unrenewed.",
                               ["pool"], registry=r)
        self.task_tokens = Counter("vibe_task_tokens", "Tokens charged to a task.", ["task"],
                                   registry=r)
        self.task_cost = Counter("vibe_task_cost_usd", "Cost charged to a task in USD.",
                                 ["task"], registry=r)
        self.call_seconds = Histogram("vibe_call_duration_seconds",
                                      "Provider call latency, by model.", ["model"],
                                      buckets=CALL_BUCKETS, registry=r)
        self.lease_seconds = Histogram("vibe_lease_wait_seconds",
                                       "Time a call waited for its lease, by model.",
                                       ["model"], buckets=LEASE_BUCKETS, registry=r)
        self.paused_seconds = Histogram("vibe_paused_seconds",
                                        "Time a task stayed paused until a decision.",
                                        buckets=PAUSE_BUCKETS, registry=r)
        self._gauges = {name: Gauge(name, doc, labels, registry=r)
                        for name, doc, labels in _GAUGES}
        self._seen_grants: dict[str, tuple[int, int]] = {}
        self._paused_at: dict[str, float] = {}
        self._by_model: dict[str, tuple[Any, ...]] = {}
        self._by_task: dict[str, tuple[Any, Any]] = {}
        view.on_settle.connect(self.on_settle)
        view.bus.subscribe(self.on_event)
        self._changes = watch_changes(view)

    # -- feeds ------------------------------------------------------------------------

    def on_settle(self, task: TaskHandle, event: UsageEvent) -> None:
        u = event.usage
        # the labelled children are looked up once per model and task: ``labels()`` costs
        # more than the increments themselves
        prompt, completion, cache_read, cache_write, cost, ok = self._model_series(event.model)
        prompt.inc(u.prompt_tokens)
        completion.inc(u.completion_tokens)
        cache_read.inc(u.cache_read_tokens)
        cache_write.inc(u.cache_write_tokens)
        cost.inc(event.cost_usd)
        ok.inc()
        if self.per_task:
            tokens, task_cost = self._task_series(task.id)
            tokens.inc(u.total_tokens)
            task_cost.inc(event.cost_usd)

    def _model_series(self, model: str) -> tuple[Any, ...]:
        found = self._by_model.get(model)
        if found is None:
            found = self._by_model[model] = (
                *(self.tokens.labels(model, kind)
                  for kind in ("prompt", "completion", "cache_read", "cache_write")),
                self.cost.labels(model), self.calls.labels(model, "ok"))
        return found

    def _task_series(self, task_id: str) -> tuple[Any, Any]:
        found = self._by_task.get(task_id)
        if found is None:
            found = self._by_task[task_id] = (self.task_tokens.labels(task_id),
                                              self.task_cost.labels(task_id))
        return found

    def forget_task(self, task_id: str) -> None:
        """Drop an ended task's series (the run forgets the task): a long-running serve
        would otherwise export one per grouped task it ever ran."""
        if self._by_task.pop(task_id, None) is not None:
            self.task_tokens.remove(task_id)
            self.task_cost.remove(task_id)
        self._paused_at.pop(task_id, None)

    def on_failure(self, model: str, error: str) -> None:
        self.calls.labels(model, error).inc()

    def on_duration(self, model: str, seconds: float) -> None:
        self.call_seconds.labels(model).observe(seconds)

    def wrap_lease(self, lease: LeaseFn) -> LeaseFn:
        """The gateway's lease step, timed into ``vibe_lease_wait_seconds``."""

        async def timed(task: TaskHandle, tokens: int, model: str) -> Any:
            started = anyio.current_time()
            try:
                return await lease(task, tokens, model)
            finally:
                self.lease_seconds.labels(model).observe(
                    anyio.current_time() - started)

        return timed

    def on_event(self, event: Event) -> None:
        self.events.labels(event.name).inc()
        if _is_deadlock_resolution(event):
            self.deadlocks.inc()
        if event.task_id is None:
            return
        if event.name == "task_paused":
            self._paused_at.setdefault(event.task_id, event.at)
        elif event.name == "decision_applied":
            since = self._paused_at.pop(event.task_id, None)
            if since is not None:
                self.paused_seconds.observe(max(0.0, event.at - since))

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
            g["vibe_lease_estimated_wait_seconds_max"].labels(p.name).set(
                max(waits.get(p.name, [0.0])))
            self._count_grants(p.name, p.grants, p.expired)
        for pool, waited in self._waited().items():
            g["vibe_lease_wait_seconds_max"].labels(pool).set(waited)
        for m in snap.models:
            g["vibe_model_health"].labels(m.model).set(HEALTH_VALUE.get(m.state, 0.0))
            g["vibe_model_error_rate"].labels(m.model).set(m.error_rate)
        for b in snap.budgets:
            g["vibe_budget_fraction"].labels(b.scope.split(":")[0], b.dimension).set(b.fraction)
        if self.per_task:
            for t in snap.tasks:
                g["vibe_task_budget_fraction"].labels(t.task_id).set(t.budget_fraction)

    def _count_grants(self, pool: str, grants: int, expired: int) -> None:
        """The allocator keeps running totals; the counters advance by what is new."""
        seen_grants, seen_expired = self._seen_grants.get(pool, (0, 0))
        if grants > seen_grants:
            self.grants.labels(pool).inc(grants - seen_grants)
        if expired > seen_expired:
            self.expired.labels(pool).inc(expired - seen_expired)
        self.grants.labels(pool)  # the series exists (at 0) once the pool does
        self.expired.labels(pool)
        self._seen_grants[pool] = (max(grants, seen_grants), max(expired, seen_expired))

    def _waited(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for w in self.view.allocator.statistics().waiters:
            out[w.pool] = max(out.get(w.pool, 0.0), float(w.waited_s))
        return out

    def exposition(self) -> bytes:
        """The text format a scrape returns."""
        return bytes(generate_latest(self.registry))

    def write_textfile(self, path: Path) -> None:
        """The final figures for node_exporter's textfile collector: written to a temporary
        file beside ``path`` and renamed, so the collector never reads half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)

    # -- service ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the endpoint (``metrics.enabled``) and refresh the gauges until the run
        ends; then write ``metrics.textfile`` when one is configured."""
        cfg = self.view.config.metrics
        try:
            if cfg.enabled:
                await self._serve()
            else:
                await self._refresh_loop()
        finally:
            self.refresh()
            if cfg.textfile is not None:
                try:
                    self.write_textfile(cfg.textfile)
                except OSError as exc:
                    _log.warning("metrics_textfile_failed", path=str(cfg.textfile),
                                 error=str(exc))

    async def _serve(self) -> None:
        cfg = self.view.config.metrics
        try:
            server, thread = start_http_server(cfg.port, addr=cfg.host, registry=self.registry)
        except OSError as exc:
            _log.warning("metrics_unavailable", host=cfg.host, port=cfg.port, error=str(exc))
            await self._refresh_loop()
            return
        self.port = int(server.server_port)
        self.view.bus.emit("metrics_listening", f"metrics on http://{cfg.host}:{self.port}/",
                           host=cfg.host, port=self.port)
        try:
            await self._refresh_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.shutdown)
                server.server_close()
                thread.join()

    async def _refresh_loop(self) -> None:
        while True:
            await self._changes.wait()
            start = anyio.current_time()
            self.refresh()
            await anyio.sleep(max(self.refresh_s, 20 * (anyio.current_time() - start)))
