"""The ``[serve]`` section: the Anthropic-compatible governed gateway and its client keys (#21)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from scheduler.config._base import (
    Complexity,
    EnvName,
    FieldProblem,
    FrozenModel,
    PriorityClass,
    TaskType,
    Word,
)
from scheduler.config._budgets import Limits
from scheduler.config._provider import usable_url

#: A client key's name becomes its task id: the same characters, and not a folder name.
_KEY_NAME = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$"


class ServeKey(FrozenModel):
    """One client key of ``vibe-engine serve``: who may call, within what, and how.

    The key itself comes from the environment variable ``key_env`` or is stored as its
    SHA-256 hex digest in ``key_sha256`` (``printf %s "$KEY" | sha256sum``); exactly
    one of the two is given.  ``budget`` limits everything the key spends, in every
    ``serve`` process sharing the store (tokens, cost, ``tokens_by_model`` …), and
    ``day_budget`` what it spends per calendar day.
    """

    name: str = Field(min_length=1, max_length=100, pattern=_KEY_NAME)
    key_env: EnvName | None = None
    key_sha256: str | None = None
    budget: Limits = Field(default_factory=Limits)
    #: The budget of each task a client groups its calls into with the ``x-vibe-task``
    #: header (task ``NAME/TASK``), inside the key's ``budget``; unset = only the key's.
    task_budget: Limits | None = None
    #: Limits of what the key spends per calendar day (local midnight, as ``budgets.day``),
    #: grouped tasks included, in every ``serve`` process sharing the store; on top of
    #: ``budget``, which counts every day.  Unset = no per-day limit of the key's own.
    day_budget: Limits | None = None
    priority: PriorityClass = "normal"
    #: Model ids (or catalog names) this key may ask for; empty = every catalog model.
    allowed_models: tuple[str, ...] = ()
    #: ``explicit``: a model id the client names is honoured (the alias is routed);
    #: ``routed``: every request is routed to the cheapest capable model.
    routing: Literal["explicit", "routed"] = "explicit"
    #: At a budget limit: ``hold`` waits for a person's decision (``vibe-engine decide``),
    #: ``reject`` answers with an error the SDKs do not retry.
    on_limit: Literal["hold", "reject"] = "reject"
    #: How the router sees this key's requests when it picks a model for the alias
    #: (R1.4 task type and R1.3 complexity): the defaults pick the cheapest capable tier.
    task_type: TaskType = "question_answering"
    complexity: Complexity = "simple"

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be a SHA-256 hex digest (64 hex characters)")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one_key_source(self) -> ServeKey:
        if (self.key_env is None) == (self.key_sha256 is None):
            raise FieldProblem("key_env", self.key_env,
                               "give exactly one of key_env and key_sha256")
        return self


class ServeConfig(FrozenModel):
    """``vibe-engine serve``: where it listens, where it forwards, and its client keys."""

    host: Word = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    #: The Messages API the gateway forwards to (default ``provider.base_url``, else
    #: https://api.anthropic.com).
    upstream_base_url: str | None = None
    #: The environment variable holding the upstream API key (the server sends it;
    #: clients never see it).
    upstream_key_env: EnvName = "ANTHROPIC_API_KEY"
    #: Seconds an upstream call may take before it counts as a timeout (fallback, R6.1).
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    #: The model name that asks the router for the cheapest capable model (R4).
    routing_alias: Word = "vibe-auto"
    #: The longest a held request waits for a decision before it is refused.
    max_hold_s: float = Field(default=600.0, gt=0)
    #: Seconds between SSE ``ping`` events a held streaming request receives (at least
    #: 0.1: a held stream must not spin sending pings).
    ping_interval_s: float = Field(default=10.0, ge=0.1, allow_inf_nan=False)
    #: The largest request body accepted, in bytes (the Messages API's own limit is
    #: 32 MB); a larger one gets 413 ``request_too_large`` without being read whole.
    max_request_bytes: int = Field(default=32_000_000, gt=0)
    #: Seconds a request may take to arrive whole, from its first byte to its last (a
    #: connection's first from its opening); a slower one gets 408 and its connection
    #: is closed, so clients that trickle or vanish mid-request hold no socket for good.
    request_timeout_s: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    #: Seconds a task grouped with ``x-vibe-task`` may go without a call in flight before
    #: it ends and the server forgets it (its usage is kept in the store; the next call
    #: under the same name starts it again from its totals).  ``0`` or unset = never.
    group_idle_s: float | None = Field(default=900.0, ge=0, allow_inf_nan=False)
    #: The most tasks one key may have grouped with ``x-vibe-task`` at a time on this
    #: process (each holds about 10 KiB, a status row and metrics series here until it
    #: idles out: the bound is on one server's memory, so N replicas allow N times it);
    #: a call naming a new task beyond it gets 429 ``rate_limit_error`` (not retried),
    #: the key's running tasks are served as before.  Also the most of a key's tasks
    #: that ended on their budget held in memory (the rest are read from the store:
    #: an ended task stays refused).
    max_tasks_per_key: int = Field(default=1000, ge=1)
    keys: tuple[ServeKey, ...] = ()

    _a_usable_url = field_validator("upstream_base_url")(usable_url)

    @model_validator(mode="after")
    def _unique_names(self) -> ServeConfig:
        seen: set[str] = set()
        for i, key in enumerate(self.keys):
            if key.name in seen:
                raise FieldProblem(f"keys.{i}.name", key.name, "duplicate key name")
            seen.add(key.name)
        return self
