"""Budget sections: limits, the R1.3 defaults per scope, the R1.4 task types, alerts, overdraft."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from scheduler.config._base import (
    Complexity,
    FieldProblem,
    FrozenModel,
    TaskType,
    Tier,
    by_complexity,
)
from scheduler.config._provider import base_url_problem


class Limits(FrozenModel):
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


class BudgetsConfig(FrozenModel):
    """R1.3 defaults for every scope."""

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
