"""Runtime sections: allocator pools, scale-out on Redis, deadlocks, health, routing, metrics,
observation, and which policy takes each decision.

A policy's parameters are its own pydantic model in ``policies/``; a section
that configures a policy either extends that model (``RoutingConfig``) or
maps its keys onto it (``AllocatorConfig.policy_params``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from policies.fairness import FairnessParams
from policies.routing import RoutingParams
from scheduler.config._base import FieldProblem, FrozenModel


class PoolConfig(FrozenModel):
    """Capacities of one provider pool (``None`` = not limited in that dimension)."""

    tokens_per_minute: int | None = Field(default=400_000, gt=0)
    requests_per_minute: int | None = Field(default=1_000, gt=0)
    concurrent: int | None = Field(default=50, gt=0)


class AllocatorConfig(FrozenModel):
    """R5.2–R5.5 parameters."""

    pools: dict[str, PoolConfig] = Field(default_factory=lambda: {"anthropic": PoolConfig()})
    lease_ttl_s: float = Field(default=300.0, gt=0)
    #: The background class's floor: while background requests wait and the class got
    #: less than this fraction of the pool's recent service, the least-served background
    #: request goes next.  (Each *agent's* minimum share — R5.3's 10 %, an equal split
    #: when more than ten compete — comes from the service-counter fairness, bounded by
    #: ``fairness_slack_tokens``; it is not a parameter.)  Was ``min_share``.
    background_min_share: float = Field(default=0.10, ge=0, le=1)
    max_share: float = Field(default=0.50, gt=0, le=1)
    aging_after_s: float = Field(default=30.0, gt=0)
    #: Aging steps a waiting request may take: ``None`` (default) +1 every
    #: ``aging_after_s`` without bound; ``1``: R5.2's single +1.
    aging_max_steps: int | None = Field(default=None, ge=1)
    demotion_at: float = Field(default=0.50, gt=0, le=1)
    output_weight: float = Field(default=2.0, ge=0)
    #: How far (in service tokens) the policy's choice may run ahead of the
    #: least-served waiter before the allocator serves that waiter instead.
    fairness_slack_tokens: float = Field(default=20_000, ge=0)
    #: Service counters within this many tokens of each other count as equal: within a
    #: priority level the least served goes first in bands of this width, and arrival
    #: order decides inside a band (O(1) queueing instead of a heap over every waiter).
    fairness_quantum_tokens: float = Field(default=100, gt=0)
    #: Time constant of the decayed window over which class shares are measured.
    share_window_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        if isinstance(data, dict) and "min_share" in data:
            raise ValueError(
                "min_share was renamed background_min_share: it sets the background class's "
                "floor, not each agent's share (see docs/allocator.md)")
        return data

    @property
    def min_share(self) -> float:
        """The background floor under its old name (the allocator core reads it)."""
        return self.background_min_share

    def policy_params(self) -> FairnessParams:
        """The allocation policy's own parameters, from the keys of this section."""
        return FairnessParams(
            aging_after_s=self.aging_after_s,
            aging_max_steps=self.aging_max_steps,
            demotion_at=self.demotion_at,
            output_weight=self.output_weight,
            rank_quantum=self.fairness_quantum_tokens,
        )


class ShellConfig(FrozenModel):
    """Agents' shell commands (``ctx.shell.run``); see docs/security.md."""

    #: Environment variables never passed to a command, as names or shell-style patterns
    #: (``MY_*``, case-insensitive) -- on top of ``provider.api_key_env`` and the built-in
    #: ``*API_KEY*``, ``*SECRET*``, ``*TOKEN*``, ``*PASSWORD*``, ``*CREDENTIAL*``, ``*AUTH*`` ….
    secret_env: tuple[str, ...] = ()


class GlobalPoolConfig(FrozenModel):
    """A provider quota shared by every orchestrator on the store (one slice each)."""

    #: The whole quota; each orchestrator's allocator gets a max-min fair slice of it.
    tokens_per_minute: int | None = Field(default=None, gt=0)
    #: The whole request quota, sliced the same way (each orchestrator's allocator then
    #: starts its request bucket empty, so together they make at most this many calls
    #: per minute since they started).
    requests_per_minute: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _something_shared(self) -> GlobalPoolConfig:
        if self.tokens_per_minute is None and self.requests_per_minute is None:
            raise ValueError("set tokens_per_minute, requests_per_minute or both")
        return self


#: The shortest ``distributed.hold_ttl_s``: 0.03 s holds lapsed mid-call in a run of 150
#: tasks (the renewals of every hold, one after another, took longer than that).
MIN_HOLD_TTL_S = 1.0


class DistributedConfig(FrozenModel):
    """Several orchestrators on one Redis (``store = "redis://…"``): see docs/scale-out.md."""

    #: Key prefix ``vibe:{namespace}:`` — one per deployment sharing budgets and quota.
    namespace: str = Field(default="default", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    #: ``closed``: no new holds or slices while Redis is unreachable (calls in flight
    #: finish; their usage is spooled locally and replayed).  ``open``: keep granting
    #: from the small local allowances below until Redis is back.
    failure_mode: Literal["closed", "open"] = "closed"
    fail_open_tokens: int = Field(default=20_000, ge=0)
    fail_open_cost_usd: float = Field(default=0.20, ge=0)
    fail_open_tokens_per_minute: int = Field(default=10_000, ge=0)
    #: A shared budget hold (Redis, or a SQLite file several processes open) whose
    #: process died is released after this long (on SQLite: at once when that process,
    #: on the same host, is gone and a hold is refused).  At least 1 s: a live call's
    #: hold is renewed every third of this, and shorter holds lapsed mid-call between
    #: renewals (other processes could then spend what the call will be charged).
    hold_ttl_s: float = Field(default=600.0, gt=0)
    #: A quota slice expires this long after its last renewal; renewed every ``renew_s``.
    slice_ttl_s: float = Field(default=15.0, gt=0)
    renew_s: float = Field(default=5.0, gt=0)
    #: A pool whose slice is 0 while this orchestrator has work for it is asked for again
    #: this often, instead of waiting for the next ``renew_s`` (an idle orchestrator waking).
    starved_poll_s: float = Field(default=0.25, gt=0)
    socket_timeout_s: float = Field(default=2.0, gt=0)
    #: Connections to Redis per orchestrator; more concurrent calls wait for a free one.
    max_connections: int = Field(default=50, ge=1, le=10_000)
    #: Fail-closed: how long a new call waits for Redis to come back before failing.
    unavailable_wait_s: float = Field(default=60.0, ge=0)
    #: Where usage is spooled while Redis is down (default ``<state_dir>/redis-spool.jsonl``).
    spool_path: Path | None = None
    #: Allocator pools whose tokens per minute are shared by all orchestrators of the
    #: namespace: each one leases a slice and its allocator subdivides only that slice
    #: (ignored unless the store is ``redis://…``; the pool's own ``tokens_per_minute``
    #: is then replaced by the slice).
    global_pools: dict[str, GlobalPoolConfig] = Field(default_factory=dict)
    #: On a ``redis://`` store, every allocator pool with a ``tokens_per_minute`` or
    #: ``requests_per_minute`` that ``global_pools`` does not name is shared too, with the
    #: pool's own figures as the global ones: the provider's quota belongs to the account,
    #: so N orchestrators must not get N times it.  ``false``: those pools' quotas are
    #: per process again.
    share_pool_quotas: bool = True
    #: This orchestrator's name as a slice holder (default ``<host>-<pid>-<random>``);
    #: unique among the orchestrators sharing the namespace.
    orchestrator_id: str | None = Field(default=None, min_length=1,
                                        pattern=r"^[A-Za-z0-9_.:\-]+$")

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> DistributedConfig:
        if self.renew_s >= self.slice_ttl_s:
            raise FieldProblem("renew_s", self.renew_s,
                               f"must be shorter than slice_ttl_s ({self.slice_ttl_s})")
        if self.hold_ttl_s < MIN_HOLD_TTL_S:
            raise FieldProblem("hold_ttl_s", self.hold_ttl_s, (
                f"must be at least {MIN_HOLD_TTL_S:g} s: a running call's budget hold is "
                "renewed every third of it and a shorter one lapses between renewals, "
                "letting other processes spend the same budget"))
        return self


class DeadlockConfig(FrozenModel):
    """R5.6/R5.7 parameters."""

    interval_s: float = Field(default=10.0, gt=0)
    max_requeues: int = Field(default=3, ge=0)


class HealthConfig(FrozenModel):
    """R6.4/R6.5 parameters."""

    interval_s: float = Field(default=60.0, gt=0)
    max_latency_s: float = Field(default=2.0, gt=0)
    max_error_rate: float = Field(default=0.10, ge=0, le=1)
    window: int = Field(default=20, gt=0)
    restore_after_successes: int = Field(default=3, gt=0)
    #: consecutive 529 overloaded / timeout errors that mark a model unavailable (R6.6).
    unavailable_after_errors: int = Field(default=3, gt=0)
    #: a 429 storm: this many rate-limit errors within ``rate_limit_storm_window_s``.
    rate_limit_storm: int = Field(default=5, gt=0)
    rate_limit_storm_window_s: float = Field(default=10.0, gt=0)
    #: a recovering model serves only tasks of at most this priority (R6.5; background = 1).
    probe_max_priority: int = Field(default=1, ge=0)


class RoutingConfig(RoutingParams, FrozenModel):
    """R4 parameters."""

    quality_floor: float = Field(default=0.5, ge=0, le=1)
    haiku_failures_before_upgrade: int = Field(default=2, gt=0)
    #: R4.3: retry an attempt that failed after its model finished while the failures are on
    #: the cheapest tier, and once on the tier the router upgrades the task to.
    retry_failed_attempts: bool = True
    #: at most this many attempts of one task in all (R4.3 retries; deadlock requeues count).
    max_attempts: int = Field(default=3, gt=0)
    #: R4.3 quality signal for answers the provider does not score: ``"signals"`` (refusals,
    #: empty answers, failed tool results; no model call), ``"llm_judge"`` (the cheapest
    #: tier rates each routed answer, charged to the task), ``"none"`` or
    #: ``"module:Class"`` (built with the gateway).
    quality_scorer: str = "signals"
    #: R6.1 for calls that name their model (``ctx.llm.complete(model=…)``): move them to a
    #: substitute after a 529 or a timeout.  Off by default: the agent asked for that
    #: model; a call may also allow it itself with ``hints={"allow_fallback": True}``.
    explicit_model_fallback: bool = False


class MetricsConfig(FrozenModel):
    """Prometheus metrics, served on a loopback port while the orchestrator runs."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    #: Write the final metrics here when the run ends (node_exporter's textfile collector
    #: format, written atomically); works with or without ``enabled``.
    textfile: Path | None = None
    #: Per-task series (``vibe_task_tokens_total{task}``…): one series per task id, so
    #: turn it off for runs with many thousands of tasks.
    task_labels: bool = True

    @model_validator(mode="after")
    def _loopback_only(self) -> MetricsConfig:
        if not (self.host in ("localhost", "::1") or self.host.startswith("127.")):
            raise FieldProblem("host", self.host, "metrics are served on loopback only")
        if self.textfile is not None and self.textfile.suffix != ".prom":
            raise FieldProblem("textfile", str(self.textfile),
                               "node_exporter's textfile collector reads *.prom files only")
        return self


class TracingConfig(FrozenModel):
    """OpenTelemetry spans of governed calls (needs the ``otel`` extra).

    Also on when ``OTEL_TRACES_EXPORTER`` names an exporter; the exporter, endpoint and
    service name come from the standard ``OTEL_*`` environment variables.
    """

    enabled: bool = False


class ObserveConfig(FrozenModel):
    """What every orchestrator records for ``status`` and ``report``."""

    status_interval_s: float | None = Field(default=1.0, gt=0)
    history: bool = True


class PoliciesConfig(FrozenModel):
    """R7.4: each decision names a policy class (built-in name, entry point or module:Class).

    ``scheduler.config.load_policies`` resolves, builds and checks all of them at start-up.
    """

    allocation: str = "policies.fairness:PriorityWithFairness"
    victim: str = "policies.victim:LowestPriorityVictim"
    complexity: str = "policies.complexity:ScoredComplexity"
    routing: str = "policies.routing:CheapestCapableRouting"
    alerts: str = "policies.alerts:DefaultAlertPolicy"
    replan: str = "policies.replan:DefaultReplanPolicy"
