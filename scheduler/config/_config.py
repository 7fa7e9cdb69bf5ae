"""Configuration: one frozen pydantic model with the spec's defaults.

Every number of SPEC.md R1.3/R1.4 lives here as a default and can be
overridden from TOML or YAML.  Loading turns any validation problem into a
:class:`~scheduler.ConfigError` naming the dotted field path and the value.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scheduler.core._errors import ConfigError

_T = TypeVar("_T")
Tier = Literal["haiku", "sonnet", "opus"]
TIERS: tuple[Tier, ...] = ("haiku", "sonnet", "opus")
TaskType = Literal[
    "question_answering",
    "code_modification",
    "bug_fix",
    "feature_implementation",
    "architecture_design",
]
TASK_TYPES: tuple[TaskType, ...] = (
    "question_answering",
    "code_modification",
    "bug_fix",
    "feature_implementation",
    "architecture_design",
)
Complexity = Literal["simple", "moderate", "complex"]
PriorityClass = Literal["critical_path", "user_waiting", "normal", "background"]
#: R5.1 base priorities.
PRIORITY_VALUES: dict[str, int] = {
    "critical_path": 3,
    "user_waiting": 3,
    "normal": 2,
    "background": 1,
}


def _by_complexity(simple: _T, moderate: _T, complex_: _T) -> dict[Complexity, _T]:
    return {"simple": simple, "moderate": moderate, "complex": complex_}


def _by_tier(haiku: _T, sonnet: _T, opus: _T) -> dict[Tier, _T]:
    return {"haiku": haiku, "sonnet": sonnet, "opus": opus}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Model):
    """A budget bundle: any subset of the R1.1 dimensions (``None`` = unlimited)."""

    tokens: int | None = Field(default=None, ge=0)
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    cache_read_tokens: int | None = Field(default=None, ge=0)
    cache_write_tokens: int | None = Field(default=None, ge=0)
    tokens_by_model: dict[Tier, int] = Field(default_factory=dict)
    time_s: float | None = Field(default=None, ge=0)
    call_time_s: float | None = Field(default=None, ge=0)
    cost_usd: float | None = Field(default=None, ge=0)
    cost_warning_usd: float | None = Field(default=None, ge=0)
    file_edits: int | None = Field(default=None, ge=0)
    shell_commands: int | None = Field(default=None, ge=0)
    dangerous_commands: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _non_negative_model_caps(self) -> Limits:
        for tier, cap in self.tokens_by_model.items():
            if cap < 0:
                raise ValueError(f"tokens_by_model.{tier} must be >= 0")
        return self

    def merged(self, override: Limits | None) -> Limits:
        """Return these limits with every field ``override`` sets replacing ours."""
        if override is None:
            return self
        data = self.model_dump()
        for name in override.model_fields_set:
            data[name] = getattr(override, name)
        return Limits.model_validate(data)


class BudgetsConfig(_Model):
    """R1.3 defaults for every scope."""

    task_tokens_by_complexity: dict[Complexity, int] = Field(
        default_factory=lambda: _by_complexity(20_000, 50_000, 150_000)
    )
    task_time_s_by_complexity: dict[Complexity, float] = Field(
        default_factory=lambda: _by_complexity(300.0, 1800.0, 3600.0)
    )
    task: Limits = Field(
        default_factory=lambda: Limits(
            time_s=1800.0,
            call_time_s=300.0,
            cost_usd=1.00,
            cost_warning_usd=0.70,
            file_edits=50,
            shell_commands=100,
            dangerous_commands=10,
        )
    )
    session: Limits = Field(
        default_factory=lambda: Limits(
            tokens=500_000,
            tokens_by_model={"opus": 50_000, "sonnet": 200_000, "haiku": 500_000},
        )
    )
    day: Limits = Field(default_factory=lambda: Limits(cost_usd=20.00))
    weekend_day_cost_usd: float | None = Field(default=5.00, ge=0)

    @model_validator(mode="after")
    def _non_negative_tables(self) -> BudgetsConfig:
        for name in ("task_tokens_by_complexity", "task_time_s_by_complexity"):
            for key, value in getattr(self, name).items():
                if value < 0:
                    raise ValueError(f"{name}.{key} must be >= 0, got {value}")
        return self


class TaskTypeSpec(_Model):
    """One row of the R1.4 task-type table."""

    tokens: int = Field(ge=0)
    time_s: float = Field(ge=0)
    cost_usd: float = Field(ge=0)
    complexity: Complexity
    preferred_model: Tier
    fallback_model: Tier | None = None
    keywords: tuple[str, ...] = ()


def _default_task_types() -> dict[TaskType, TaskTypeSpec]:
    return {
        "question_answering": TaskTypeSpec(
            tokens=10_000, time_s=120, cost_usd=0.10, complexity="simple",
            preferred_model="haiku", fallback_model="sonnet",
            keywords=("what", "why", "how", "explain", "question", "?", "describe", "where"),
        ),
        "code_modification": TaskTypeSpec(
            tokens=50_000, time_s=900, cost_usd=0.50, complexity="moderate",
            preferred_model="sonnet", fallback_model="haiku",
            keywords=("rename", "format", "update", "change", "modify", "refactor", "docs",
                      "docstring", "typo", "comment"),
        ),
        "bug_fix": TaskTypeSpec(
            tokens=80_000, time_s=1800, cost_usd=0.80, complexity="moderate",
            preferred_model="sonnet", fallback_model="opus",
            keywords=("bug", "fix", "error", "crash", "broken", "fails", "regression",
                      "exception", "traceback"),
        ),
        "feature_implementation": TaskTypeSpec(
            tokens=150_000, time_s=3600, cost_usd=1.50, complexity="complex",
            preferred_model="sonnet", fallback_model="haiku",
            keywords=("implement", "add", "feature", "build", "create", "support", "endpoint",
                      "tests for", "write tests"),
        ),
        "architecture_design": TaskTypeSpec(
            tokens=100_000, time_s=1800, cost_usd=1.00, complexity="complex",
            preferred_model="opus", fallback_model="sonnet",
            keywords=("architecture", "design", "trade-off", "tradeoff", "migrate", "scalab",
                      "security review", "optimi"),
        ),
    }


class ModelSpec(_Model):
    """One entry of the model catalog: a tier and its Anthropic model and prices."""

    model_id: str
    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)
    context_window: int = Field(default=200_000, gt=0)
    cache_read_multiplier: float = Field(default=0.1, ge=0)
    cache_write_5m_multiplier: float = Field(default=1.25, ge=0)
    cache_write_1h_multiplier: float = Field(default=2.0, ge=0)


def _default_models() -> dict[Tier, ModelSpec]:
    return {
        "haiku": ModelSpec(model_id="claude-haiku-4-5", input_usd_per_mtok=1.0,
                           output_usd_per_mtok=5.0),
        "sonnet": ModelSpec(model_id="claude-sonnet-4-6", input_usd_per_mtok=3.0,
                            output_usd_per_mtok=15.0),
        "opus": ModelSpec(model_id="claude-opus-4-7", input_usd_per_mtok=5.0,
                          output_usd_per_mtok=25.0),
    }


class AlertsConfig(_Model):
    """R3.1 thresholds as fractions of a limit."""

    warning: float = Field(default=0.70, gt=0, le=1)
    critical: float = Field(default=0.90, gt=0, le=1)
    exceeded: float = Field(default=1.00, gt=0, le=1)
    #: R3.4: how long a paused task waits for a person; then it saves and finishes.
    #: ``None`` waits forever (set it for unattended runs such as the demo).
    decision_timeout_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AlertsConfig:
        if not self.warning < self.critical <= self.exceeded:
            raise ValueError("thresholds must satisfy warning < critical <= exceeded")
        return self


class OverdraftConfig(_Model):
    """R3.5 limited grace."""

    tokens: int = Field(default=5_000, ge=0)
    cost_usd: float = Field(default=0.10, ge=0)


class PoolConfig(_Model):
    """Capacities of one provider pool (``None`` = not limited in that dimension)."""

    tokens_per_minute: int | None = Field(default=400_000, gt=0)
    requests_per_minute: int | None = Field(default=1_000, gt=0)
    concurrent: int | None = Field(default=50, gt=0)


class AllocatorConfig(_Model):
    """R5.2–R5.5 parameters."""

    pools: dict[str, PoolConfig] = Field(default_factory=lambda: {"anthropic": PoolConfig()})
    lease_ttl_s: float = Field(default=300.0, gt=0)
    min_share: float = Field(default=0.10, ge=0, le=1)
    max_share: float = Field(default=0.50, gt=0, le=1)
    aging_after_s: float = Field(default=30.0, gt=0)
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


class GlobalPoolConfig(_Model):
    """A provider quota shared by every orchestrator on the store (one slice each)."""

    #: The whole quota; each orchestrator's allocator gets a max-min fair slice of it.
    tokens_per_minute: int = Field(gt=0)


class DistributedConfig(_Model):
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
    #: A shared hold whose process died is released after this long.
    hold_ttl_s: float = Field(default=600.0, gt=0)
    #: A quota slice expires this long after its last renewal; renewed every ``renew_s``.
    slice_ttl_s: float = Field(default=15.0, gt=0)
    renew_s: float = Field(default=5.0, gt=0)
    #: A pool whose slice is 0 while this orchestrator has work for it is asked for again
    #: this often, instead of waiting for the next ``renew_s`` (an idle orchestrator waking).
    starved_poll_s: float = Field(default=0.25, gt=0)
    socket_timeout_s: float = Field(default=2.0, gt=0)
    #: Fail-closed: how long a new call waits for Redis to come back before failing.
    unavailable_wait_s: float = Field(default=60.0, ge=0)
    #: Where usage is spooled while Redis is down (default ``<state_dir>/redis-spool.jsonl``).
    spool_path: Path | None = None
    #: Allocator pools whose tokens per minute are shared by all orchestrators of the
    #: namespace: each one leases a slice and its allocator subdivides only that slice
    #: (ignored unless the store is ``redis://…``; the pool's own ``tokens_per_minute``
    #: is then replaced by the slice).
    global_pools: dict[str, GlobalPoolConfig] = Field(default_factory=dict)
    #: This orchestrator's name as a slice holder (default ``<host>-<pid>-<random>``);
    #: unique among the orchestrators sharing the namespace.
    orchestrator_id: str | None = Field(default=None, min_length=1,
                                        pattern=r"^[A-Za-z0-9_.:\-]+$")

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> DistributedConfig:
        if self.renew_s >= self.slice_ttl_s:
            raise ValueError("renew_s must be shorter than slice_ttl_s")
        return self


class DeadlockConfig(_Model):
    """R5.6/R5.7 parameters."""

    interval_s: float = Field(default=10.0, gt=0)
    max_requeues: int = Field(default=3, ge=0)


class HealthConfig(_Model):
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


class RoutingConfig(_Model):
    """R4 parameters."""

    downgrade_above: float = Field(default=0.70, gt=0, le=1)
    quality_floor: float = Field(default=0.5, ge=0, le=1)
    haiku_failures_before_upgrade: int = Field(default=2, gt=0)
    #: R4.3: retry an attempt that failed after its model finished while the failures are on
    #: the cheapest tier, and once on the tier the router upgrades the task to.
    retry_failed_attempts: bool = True
    #: at most this many attempts of one task in all (R4.3 retries; deadlock requeues count).
    max_attempts: int = Field(default=3, gt=0)
    #: R4.3 quality signal for answers the provider does not score: ``"none"``,
    #: ``"llm_judge"`` (the cheapest tier rates each routed answer, charged to the task) or
    #: ``"module:Class"`` (built with the gateway).
    quality_scorer: str = "none"


class MetricsConfig(_Model):
    """Prometheus metrics, served on a loopback port while the orchestrator runs."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)

    @model_validator(mode="after")
    def _loopback_only(self) -> MetricsConfig:
        if not (self.host in ("localhost", "::1") or self.host.startswith("127.")):
            raise ValueError(f"metrics are served on loopback only, not {self.host!r}")
        return self


class ObserveConfig(_Model):
    """What every orchestrator records for ``status`` and ``report``."""

    status_interval_s: float | None = Field(default=1.0, gt=0)
    history: bool = True


class PoliciesConfig(_Model):
    """R7.4: each decision names a policy class (built-in name, entry point or module:Class)."""

    allocation: str = "policies.fairness:PriorityWithFairness"
    victim: str = "policies.victim:LowestPriorityVictim"
    complexity: str = "policies.complexity:ScoredComplexity"
    routing: str = "policies.routing:CheapestCapableRouting"
    alerts: str = "policies.alerts:DefaultAlertPolicy"
    replan: str = "policies.replan:DefaultReplanPolicy"


class OutageWindow(_Model):
    """A scripted outage of the simulated provider: ``model`` answers 529 in the window."""

    model: Tier
    #: seconds after the provider's first call (anyio time, not scaled by ``time_scale``).
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> OutageWindow:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self


class SimulatedProviderConfig(_Model):
    """Knobs of the deterministic simulated provider."""

    seed: int = 0
    latency_s: dict[Tier, float] = Field(default_factory=lambda: _by_tier(0.4, 1.0, 2.0))
    failure_rate: dict[Tier, float] = Field(default_factory=lambda: _by_tier(0.05, 0.02, 0.01))
    output_tokens: tuple[int, int] = (200, 1500)
    time_scale: float = Field(default=1.0, ge=0)
    #: a failed attempt is retried this many times before the 529 is raised (the SDK's
    #: ``max_retries``).
    retries: int = Field(default=2, ge=0)
    #: scripted outages (outage drills, the demo's opus outage).
    outages: tuple[OutageWindow, ...] = ()


class ProviderConfig(_Model):
    """Which provider serves model calls."""

    kind: Literal["simulated", "anthropic"] = "simulated"
    base_url: str | None = None
    api_key_env: str = "ANTHROPIC_API_KEY"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    #: Backoff before retrying a 529/500/timeout/dropped connection: base × 2^(n-1), capped.
    #: A 429 waits its ``retry-after`` instead.
    retry_backoff_s: float = Field(default=0.5, ge=0)
    retry_backoff_max_s: float = Field(default=8.0, ge=0)
    #: System prompts at least this long are sent with ``cache_control`` (5-minute TTL).
    cache_system_min_chars: int = Field(default=4096, ge=0)
    count_tokens: Literal["tiktoken", "api"] = "tiktoken"
    simulated: SimulatedProviderConfig = Field(default_factory=SimulatedProviderConfig)


class TaskSpec(_Model):
    """A task to run: which agent, what to do, and optional overrides."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    agent: str
    prompt: str = ""
    task_type: TaskType | None = None
    complexity: Complexity | None = None
    priority: PriorityClass = "normal"
    depends_on: tuple[str, ...] = ()
    budget: Limits | None = None
    requires_high_capability: bool = False
    params: dict[str, Any] = Field(default_factory=dict)


class VibeConfig(_Model):
    """The whole configuration of one orchestrator."""

    state_dir: Path = Path(".vibe-engine")
    store: str = "sqlite"
    session_id: str | None = None
    seed: int = 0
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    task_types: dict[TaskType, TaskTypeSpec] = Field(default_factory=_default_task_types)
    models: dict[Tier, ModelSpec] = Field(default_factory=_default_models)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    overdraft: OverdraftConfig = Field(default_factory=OverdraftConfig)
    allocator: AllocatorConfig = Field(default_factory=AllocatorConfig)
    deadlock: DeadlockConfig = Field(default_factory=DeadlockConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    observe: ObserveConfig = Field(default_factory=ObserveConfig)
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    tasks: tuple[TaskSpec, ...] = ()

    @model_validator(mode="after")
    def _complete_catalog(self) -> VibeConfig:
        missing = [t for t in TIERS if t not in self.models]
        if missing:
            raise ValueError(f"models must define every tier; missing {missing}")
        ids = [t.id for t in self.tasks]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate task ids {dupes}")
        unknown = sorted(set(self.distributed.global_pools) - set(self.allocator.pools))
        if unknown:
            raise ValueError(f"distributed.global_pools {unknown} are not allocator pools; "
                             f"known: {sorted(self.allocator.pools)}")
        return self

    def model_spec(self, tier: str) -> ModelSpec:
        """The catalog entry for ``tier`` (raises ConfigError for an unknown tier)."""
        try:
            return self.models[tier]  # type: ignore[index]
        except KeyError:
            known = list(self.models)
            raise ConfigError("models", tier, f"unknown model; known: {known}") from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def config_from_dict(data: dict[str, Any]) -> VibeConfig:
    """Validate ``data``; the first problem becomes one :class:`ConfigError`."""
    try:
        return VibeConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        raise ConfigError(_field_path(loc), err.get("input"), err["msg"]) from None


def load_config(path: str | Path) -> VibeConfig:
    """Load a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", str(p), f"cannot read: {exc.strerror}") from None
    data: Any
    if p.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("<file>", str(p), f"malformed YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<file>", str(p), f"malformed TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("<root>", type(data).__name__, "config must be a table/mapping")
    return config_from_dict(data)
