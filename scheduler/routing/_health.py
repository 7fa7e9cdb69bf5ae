"""Model health: monitoring, outages, recovery checks and gradual restoration (SPEC R6.3–R6.6).

Every call the gateway makes is recorded (:meth:`HealthMonitor.record_call`):
success, latency, retries and the kind of error.  From those the monitor keeps
per-model success rate, retry rate, error rate, latency and a user-satisfaction
signal (R6.3), and moves each model through three states::

    available ──(3 consecutive 529/timeouts, or a 429 storm)──▶ unavailable
        ▲                                                          │
        │ 3 consecutive successes        health check passes (R6.4)│
        └──────────────── recovering ◀─────────────────────────────┘
                              │ any failure
                              └──────────────▶ unavailable

A *recovering* model serves only low-priority tasks (R6.5).  The health check
runs every ``HealthConfig.interval_s`` (60 s) for each model that is not
available: a cheap ping completion must answer within ``max_latency_s`` (2 s)
and the model's error rate over the last interval must be under
``max_error_rate`` (10 %).  Each transition emits exactly one event (R6.6):
``model_unavailable`` ("X temporarily unavailable, switched to Y, capability
may be limited"), ``model_recovering`` and ``model_restored`` ("model X is
back, best configuration restored").
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from scheduler.config import VibeConfig
from scheduler.core import (
    EventBus,
    OverloadedError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    get_logger,
    loop_time,
)
from scheduler.routing._catalog import ModelCatalog

_log = get_logger("vibe_engine.health")

ModelState = Literal["available", "unavailable", "recovering"]
#: A cheap completion on ``model``; raises on failure.  Its latency is measured here.
Ping = Callable[[str], Awaitable[object]]
OUTAGE_ERRORS = frozenset({"overloaded", "timeout"})
_MAX_RECENT = 10_000


#: Statuses with which the provider refuses a request for what it holds (a malformed
#: body, one too large): the request's fault, which says nothing about the model.
REQUEST_STATUSES = frozenset({400, 413})


def error_kind_of(exc: BaseException) -> str:
    """The health-relevant kind of a provider error (``request``: not the model's)."""
    if isinstance(exc, ProviderError) and exc.status in REQUEST_STATUSES:
        return "request"
    if isinstance(exc, RateLimitedError):
        return "rate_limited"
    if isinstance(exc, OverloadedError):
        return "overloaded"
    if isinstance(exc, ProviderTimeoutError | TimeoutError):
        return "timeout"
    return "error"


@dataclass(frozen=True, slots=True)
class ModelHealthStats:
    """R6.3 figures of one model (rates over the last ``HealthConfig.window`` calls)."""

    model: str
    state: ModelState
    calls: int
    errors: int
    retries: int
    success_rate: float
    error_rate: float
    retry_rate: float
    mean_latency_s: float
    satisfaction: float | None
    consecutive_errors: int
    probation_successes: int


@dataclass(frozen=True, slots=True)
class HealthStatistics:
    models: Mapping[str, ModelHealthStats]
    transitions: int
    checks: int


class _Recent:
    """One model's recent calls, oldest first: ``(loop time, succeeded, latency)`` each.

    Kept in flat arrays, 17 bytes a call: a run keeps every call of the last
    ``interval_s`` here, and as tuples of Python numbers those were 112 bytes each (a
    fifth of a kilobyte per agent of a large run making two calls)."""

    __slots__ = ("_at", "_latency", "_ok", "_start")

    def __init__(self) -> None:
        self._at = array("d")
        self._ok = bytearray()
        self._latency = array("d")
        self._start = 0  # the entries before it were dropped (the arrays shrink in bulk)

    def __len__(self) -> int:
        return len(self._at) - self._start

    def __iter__(self) -> Iterator[tuple[float, bool, float]]:
        return self._from(self._start)

    def _from(self, first: int) -> Iterator[tuple[float, bool, float]]:
        at, ok, latency = self._at, self._ok, self._latency
        return ((at[i], bool(ok[i]), latency[i]) for i in range(first, len(at)))

    def last(self, n: int) -> list[tuple[float, bool, float]]:
        """The ``n`` latest calls, oldest first."""
        return list(self._from(max(self._start, len(self._at) - n)))

    def push(self, at: float, ok: bool, latency_s: float, horizon: float, keep: int) -> None:
        """Append a call, then drop the oldest calls before ``horizon`` (loop time) while
        more than ``keep`` remain, and any beyond :data:`_MAX_RECENT`: one frame per call
        (every model call records one), the trimming read from the arrays themselves."""
        times = self._at
        times.append(at)
        self._ok.append(ok)
        self._latency.append(latency_s)
        start = self._start
        end = len(times)
        while end - start > keep and (times[start] < horizon or end - start > _MAX_RECENT):
            start += 1
        if start != self._start:
            self._start = start
            if start >= 256 and 2 * start >= end:  # amortised: half the arrays dropped
                del times[:start], self._ok[:start], self._latency[:start]
                self._start = 0


@dataclass(slots=True)
class _Record:
    window: int
    state: ModelState = "available"
    calls: int = 0
    errors: int = 0
    retries: int = 0
    consecutive_errors: int = 0
    probation_successes: int = 0
    recent: _Recent = field(default_factory=_Recent)
    rate_limited_at: deque[float] = field(default_factory=deque)
    satisfaction: deque[float] = field(default_factory=lambda: deque(maxlen=50))


class HealthMonitor:
    """Per-model health, availability and recovery (see the module docstring)."""

    def __init__(
        self,
        config: VibeConfig,
        bus: EventBus,
        *,
        catalog: ModelCatalog | None = None,
        clock: Callable[[], float] = loop_time,
        ping: Ping | None = None,
    ) -> None:
        self.params = config.health
        self.catalog = catalog or ModelCatalog(config)
        self.bus = bus
        self._clock = clock
        #: The clock calls are recorded on (a caller that read it may pass the reading).
        self.clock = clock
        self.ping = ping
        self._records = {t: _Record(self.params.window) for t in self.catalog.tiers}
        self._waiters: list[anyio.Event] = []
        self._transitions = 0
        self._checks = 0
        #: :meth:`usable` per "low priority", until the next state change.
        self._usable: dict[bool, frozenset[str]] = {}

    # -- inspection --------------------------------------------------------------------
    def state(self, model: str) -> ModelState:
        return self._rec(model).state

    def usable(self, priority: int) -> frozenset[str]:
        """Models a task of ``priority`` may be routed to now (R6.5: probation is low-priority)."""
        low = priority <= self.params.probe_max_priority
        out = self._usable.get(low)
        if out is None:  # asked several times per call; changes only at a transition
            out = self._usable[low] = frozenset(
                t for t, r in self._records.items()
                if r.state == "available" or (r.state == "recovering" and low)
            )
        return out

    def is_usable(self, model: str, priority: int) -> bool:
        return model in self.usable(priority)

    def statistics(self) -> HealthStatistics:
        return HealthStatistics(
            {m: self._stats(m, r) for m, r in self._records.items()}, self._transitions,
            self._checks,
        )

    def _stats(self, model: str, r: _Record) -> ModelHealthStats:
        last = r.recent.last(self.params.window)
        n = len(last)
        ok = sum(1 for _, good, _ in last if good)
        return ModelHealthStats(
            model, r.state, r.calls, r.errors, r.retries,
            ok / n if n else 1.0, (n - ok) / n if n else 0.0,
            r.retries / r.calls if r.calls else 0.0,
            sum(lat for _, _, lat in last) / n if n else 0.0,
            sum(r.satisfaction) / len(r.satisfaction) if r.satisfaction else None,
            r.consecutive_errors, r.probation_successes,
        )

    def recent_error_rate(self, model: str) -> float:
        """Error rate of ``model`` over the last ``interval_s`` seconds (0 when idle)."""
        r = self._rec(model)
        since = self._clock() - self.params.interval_s
        recent = [good for t, good, _ in r.recent if t >= since]
        return recent.count(False) / len(recent) if recent else 0.0

    # -- feeding (every call) ----------------------------------------------------------
    def record_call(
        self, model: str, ok: bool, latency_s: float = 0.0, error_kind: str | None = None,
        *, retries: int = 0, at: float | None = None,
    ) -> None:
        """Record one finished call of ``model`` (R6.3) and apply outage/restoration rules.
        A call refused for what its request holds is not recorded: a client sending
        malformed requests must not lower a model's success rate, nor keep an unavailable
        one from passing its health check.  ``at``: the monitor's clock read just now
        (the caller read it for ``latency_s``)."""
        if error_kind == "request":
            return
        r = self._records.get(model) or self._rec(model)
        now = self._clock() if at is None else at
        r.calls += 1
        r.retries += retries
        params = self.params
        r.recent.push(now, ok, latency_s, now - params.interval_s, params.window)
        if ok:
            r.consecutive_errors = 0
            if r.state == "recovering":
                self._probation_success(model, r)
            return
        r.errors += 1
        if error_kind == "rate_limited":
            r.rate_limited_at.append(now)
            storm_start = now - self.params.rate_limit_storm_window_s
            while r.rate_limited_at and r.rate_limited_at[0] < storm_start:
                r.rate_limited_at.popleft()
        if error_kind in OUTAGE_ERRORS or error_kind == "rate_limited":
            r.consecutive_errors += 1
        self._after_error(model, r, error_kind)

    def record_satisfaction(self, model: str, score: float) -> None:
        """A user-satisfaction or judge score in [0, 1] for ``model`` (R6.3)."""
        self._rec(model).satisfaction.append(max(0.0, min(1.0, score)))

    def _after_error(self, model: str, r: _Record, kind: str | None) -> None:
        if r.state == "recovering":
            self.mark_unavailable(model, f"failed while recovering ({kind or 'error'})")
        elif r.state == "available":
            storm = len(r.rate_limited_at) >= self.params.rate_limit_storm
            outage = r.consecutive_errors >= self.params.unavailable_after_errors
            if storm:
                self.mark_unavailable(model, "429 storm")
            elif kind in OUTAGE_ERRORS and outage:
                self.mark_unavailable(model, f"{r.consecutive_errors} consecutive {kind} errors")

    # -- transitions (each emits exactly one event) ------------------------------------
    def mark_unavailable(self, model: str, reason: str) -> None:
        r = self._rec(model)
        if r.state == "unavailable":
            return
        r.state = "unavailable"
        r.probation_successes = 0
        r.rate_limited_at.clear()
        sub = self.catalog.first_usable(
            self.catalog.substitutes(model),
            (t for t, rec in self._records.items() if rec.state == "available"),
        )
        switched = (f"switched to {sub}, capability may be limited" if sub
                    else "no other model available")
        self._transition(
            "model_unavailable", f"{model} temporarily unavailable, {switched}", model,
            level="warning", reason=reason, substitute=sub,
        )

    def _mark_recovering(self, model: str, latency_s: float) -> None:
        r = self._rec(model)
        r.state = "recovering"
        r.probation_successes = 0
        r.consecutive_errors = 0
        self._transition(
            "model_recovering",
            f"{model} passed its health check ({latency_s:.2f} s); serving low-priority tasks "
            f"until {self.params.restore_after_successes} consecutive successes",
            model, latency_s=latency_s,
        )

    def _probation_success(self, model: str, r: _Record) -> None:
        r.probation_successes += 1
        if r.probation_successes >= self.params.restore_after_successes:
            r.state = "available"
            r.probation_successes = 0
            self._transition(
                "model_restored", f"model {model} is back, best configuration restored", model,
            )

    def _transition(self, name: str, message: str, model: str, level: str = "info",
                    **data: Any) -> None:
        self._transitions += 1
        self._usable.clear()
        self.bus.emit(name, message, level=level, model=model, **data)
        waiters, self._waiters = self._waiters, []
        for ev in waiters:
            ev.set()

    # -- health checks (R6.4) ----------------------------------------------------------
    async def check_once(self) -> dict[str, bool]:
        """Ping every model that is not available; returns model → passed."""
        results: dict[str, bool] = {}
        if self.ping is None:
            return results
        self._checks += 1
        for model, r in list(self._records.items()):
            if r.state != "available":
                results[model] = await self._check(model, r)
        return results

    def _push(self, r: _Record, ok: bool, latency_s: float) -> None:
        now = self._clock()
        r.recent.push(now, ok, latency_s, now - self.params.interval_s, self.params.window)

    async def _check(self, model: str, r: _Record) -> bool:
        assert self.ping is not None
        start = self._clock()
        try:
            await self.ping(model)
        except Exception as exc:  # a failed ping is a failed check; cancellation passes
            latency = self._clock() - start
            self._push(r, False, latency)
            _log.info("health_check_failed", model=model, error=type(exc).__name__)
            if r.state == "recovering":
                self.mark_unavailable(model, f"health check failed ({type(exc).__name__})")
            return False
        latency = self._clock() - start
        self._push(r, True, latency)
        passed = (latency < self.params.max_latency_s
                  and self.recent_error_rate(model) < self.params.max_error_rate)
        _log.info("health_check", model=model, latency_s=latency, passed=passed,
                  error_rate=self.recent_error_rate(model))
        if r.state == "unavailable" and passed:
            self._mark_recovering(model, latency)
        elif r.state == "recovering":
            if passed:
                self._probation_success(model, r)
            else:
                self.mark_unavailable(model, "health check too slow or error rate too high")
        return passed

    async def run(self) -> None:
        """Check every ``interval_s`` forever (an orchestrator service)."""
        while True:
            await anyio.sleep(self.params.interval_s)
            await self.check_once()

    async def wait_usable(self, model: str, priority: int) -> None:
        """Wait until ``model`` may serve a task of ``priority`` (used to defer, R6.7)."""
        while not self.is_usable(model, priority):
            ev = anyio.Event()
            self._waiters.append(ev)
            await ev.wait()

    def _rec(self, model: str) -> _Record:
        rec = self._records.get(model)
        if rec is None:
            # a model outside the tiers, named by an agent: watched from its first call
            self.catalog.entry(model)  # raises ConfigError for an unknown model
            rec = self._records[model] = _Record(self.params.window)
            self._usable.clear()
        return rec
