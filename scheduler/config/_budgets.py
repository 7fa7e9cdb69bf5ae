"""Budget sections: limits, the R1.3 defaults per scope, the R1.4 task types, alerts, overdraft."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from scheduler.config._base import (
    TIERS,
    Complexity,
    FieldProblem,
    FrozenModel,
    TaskType,
    Tier,
    by_complexity,
)
from scheduler.config._provider import base_url_problem

#: The word a config gives for "no limit" (TOML has no null; YAML/JSON ``null`` is the same).
#: Only this one: "none" could be read as "zero allowed", the opposite.
UNLIMITED = "unlimited"
_NOT_A_LIMIT = f'expected a number, or "{UNLIMITED}"'


def _is_unlimited(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == UNLIMITED


def _unlimited_as_none(name: str, value: Any) -> Any:
    """``value`` of the limit ``name``, with ``"unlimited"`` read as ``None``; any other
    string is refused here, so the error names the field and says what it takes."""
    if not isinstance(value, str):
        return value
    if _is_unlimited(value):
        return None
    raise FieldProblem(name, value, _NOT_A_LIMIT)


class Limits(FrozenModel):
    """A budget bundle: any subset of the R1.1 dimensions (``None`` or ``"unlimited"`` =
    unlimited)."""

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

    @model_validator(mode="before")
    @classmethod
    def _unlimited_words(cls, data: Any) -> Any:
        # a tier whose cap is "unlimited" (or null) has no cap: it is left out of the table
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] | None = None
        for name, value in data.items():
            if name == "tokens_by_model" and (value is None or _is_unlimited(value)):
                value = {}  # no tier has a cap
            elif name == "tokens_by_model" and isinstance(value, dict):
                if all(isinstance(v, int) for v in value.values()):
                    continue
                value = {tier: cap for tier, cap in value.items()  # an unknown tier is refused
                         if tier not in TIERS
                         or _unlimited_as_none(f"{name}.{tier}", cap) is not None}
            elif isinstance(value, str) and name in cls.model_fields:
                value = _unlimited_as_none(name, value)
            else:
                continue
            out = out if out is not None else dict(data)
            out[name] = value
        return data if out is None else out

    @model_validator(mode="after")
    def _non_negative_model_caps(self) -> Limits:
        for tier, cap in self.tokens_by_model.items():
            if cap < 0:
                raise FieldProblem(f"tokens_by_model.{tier}", cap, "must be >= 0")
        return self

    def merged(self, override: Limits | None) -> Limits:
        """Return these limits with every field ``override`` sets replacing ours."""
        if override is None:
            return self
        data = self.model_dump()
        for name in override.model_fields_set:
            data[name] = getattr(override, name)
        return Limits.model_validate(data)


_SCOPES = ("task", "session", "day")
_TABLES = ("task_tokens_by_complexity", "task_time_s_by_complexity")


def _moved_warning(default: Limits, cost: Any) -> Any:
    """The default cost warning moved with a new cost limit (same fraction of it, R3.1)."""
    old, warn = default.cost_usd, default.cost_warning_usd
    if cost is None or _is_unlimited(cost):
        return None
    if type(cost) not in (int, float) or not math.isfinite(cost) or not old:
        return warn  # a bad cost limit is refused by its own field
    return round(cost * warn / old, 6) if cost and warn is not None else None


def laid_over(default: Limits, given: Any) -> Any:
    """A scope's section as given in a config, laid key by key over its R1.3 default:
    a key not given keeps its default; ``tokens_by_model`` is laid over tier by tier
    (a tier given as ``"unlimited"`` loses its cap; an empty table, as configs written
    before sections kept their defaults say it, leaves no tier a cap); a new
    ``cost_usd`` without its own ``cost_warning_usd`` moves the default warning with it
    (same fraction).  A ``Limits`` object (the Python API) is a whole bundle, its unset
    fields unlimited: taken as is."""
    if not isinstance(given, dict):
        return given  # a Limits object, or not a table (its own error names the section)
    data: dict[str, Any] = {**default.model_dump(), **given}
    tiers = given.get("tokens_by_model")
    if isinstance(tiers, dict) and tiers:  # an empty table given: no tier has a cap
        data["tokens_by_model"] = {**default.tokens_by_model, **tiers}
    if ("cost_usd" in given and "cost_warning_usd" not in given
            and default.cost_warning_usd is not None):
        data["cost_warning_usd"] = _moved_warning(default, given["cost_usd"])
    return data


class BudgetsConfig(FrozenModel):
    """R1.3 defaults for every scope; a section given is laid over them key by key (keys
    not given keep their defaults; ``"unlimited"`` turns one off).

    This holds for the scope sections (``[budgets.day]`` …, ``tokens_by_model`` tier by
    tier) and the ``*_by_complexity`` tables given as tables; YAML/JSON ``null`` is
    ``"unlimited"``.  A ``Limits`` object given in Python is the whole section.
    """

    task_tokens_by_complexity: dict[Complexity, int] = Field(
        default_factory=lambda: by_complexity(20_000, 50_000, 150_000)
    )
    task_time_s_by_complexity: dict[Complexity, float] = Field(
        default_factory=lambda: by_complexity(300.0, 1800.0, 3600.0)
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

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        # a stored run's config (``resume``) is the whole of what it ran with, every key
        # and tier in it: it is taken as it is, so the run resumes with the same limits
        if not isinstance(data, dict) or (info.context or {}).get("resuming"):
            return data
        out = dict(data)
        fields = cls.model_fields
        for name in _SCOPES:
            if name in data:
                out[name] = laid_over(fields[name].get_default(call_default_factory=True),
                                      data[name])
        for name in _TABLES:
            if isinstance(data.get(name), dict):
                out[name] = {**fields[name].get_default(call_default_factory=True),
                             **data[name]}
        if "weekend_day_cost_usd" in data:
            out["weekend_day_cost_usd"] = _unlimited_as_none(
                "weekend_day_cost_usd", data["weekend_day_cost_usd"])
        return out

    @model_validator(mode="after")
    def _non_negative_tables(self) -> BudgetsConfig:
        for name in ("task_tokens_by_complexity", "task_time_s_by_complexity"):
            for key, value in getattr(self, name).items():
                if value < 0:
                    raise FieldProblem(f"{name}.{key}", value, "must be >= 0")
        return self


class TaskTypeSpec(FrozenModel):
    """One row of the R1.4 task-type table."""

    tokens: int = Field(ge=0)
    time_s: float = Field(ge=0)
    cost_usd: float = Field(ge=0)
    complexity: Complexity
    preferred_model: Tier
    fallback_model: Tier | None = None
    keywords: tuple[str, ...] = ()


def default_task_types() -> dict[TaskType, TaskTypeSpec]:
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


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


class WebhookConfig(FrozenModel):
    """Where the ``notify`` alert action and paused tasks are posted (R3.3, R3.4).

    Secrets stay out of the config file: ``url_env`` names the environment variable
    that holds the URL (a Slack incoming-webhook URL is itself a secret), and
    ``headers`` maps each header name to the environment variable holding its value.
    """

    url: str | None = None
    url_env: str | None = None
    #: ``json``: the notification's fields; ``slack``: a Slack-compatible ``{"text": …}``.
    format: Literal["json", "slack"] = "json"
    #: header name → name of the environment variable that holds its value
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookConfig:
        if (self.url is None) == (self.url_env is None):
            raise FieldProblem("url", self.url, "give exactly one of url and url_env")
        problem = base_url_problem(self.url) if self.url is not None else None
        if problem is not None:
            raise FieldProblem("url", self.url, problem)
        for env in [self.url_env or "", *self.headers.values()]:
            if env and not _ENV_NAME.match(env):
                raise FieldProblem("headers", env, "expected an environment variable name")
        for name in self.headers:
            if not _HEADER_NAME.match(name):
                raise FieldProblem("headers", name, "expected an HTTP header name")
        return self


class AlertsConfig(FrozenModel):
    """R3.1 thresholds as fractions of a limit, and where notifications go."""

    warning: float = Field(default=0.70, gt=0, le=1)
    critical: float = Field(default=0.90, gt=0, le=1)
    exceeded: float = Field(default=1.00, gt=0, le=1)
    #: R3.4: how long a paused task waits for a person; then it saves and finishes.
    #: ``None`` waits forever (set it for unattended runs such as the demo).
    decision_timeout_s: float | None = Field(default=None, gt=0)
    #: Webhooks that receive ``notify`` actions (critical, R3.3) and paused tasks (R3.4).
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    #: Notifications waiting per webhook; when full, the oldest is dropped (and counted).
    webhook_queue: int = Field(default=100, gt=0)
    #: Tries per notification; a failed try waits ``webhook_backoff_s`` × 2^(n-1) (≤ 60 s).
    webhook_attempts: int = Field(default=5, gt=0)
    webhook_backoff_s: float = Field(default=1.0, ge=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AlertsConfig:
        if not self.warning < self.critical <= self.exceeded:
            raise FieldProblem("critical", self.critical,
                               "thresholds must satisfy warning < critical <= exceeded")
        return self


class OverdraftConfig(FrozenModel):
    """R3.5 limited grace."""

    tokens: int = Field(default=5_000, ge=0)
    cost_usd: float = Field(default=0.10, ge=0)
