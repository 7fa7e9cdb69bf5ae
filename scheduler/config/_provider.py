"""The model catalog and the provider that serves calls (simulated or Anthropic)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from scheduler.config._base import EnvName, FieldProblem, FrozenModel, Tier, Word, by_tier


class ModelSpec(FrozenModel):
    """One named model of the catalog: its provider id, prices and place in the tier order.

    Prices are US dollars per million tokens; cache reads and writes cost the
    input price times their multiplier.  ``rank`` orders the models the router
    may choose among, cheapest and weakest first; a model without a rank is
    used only when an agent asks for it by name.
    """

    model_id: Word
    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)
    context_window: int = Field(default=200_000, gt=0)
    cache_read_multiplier: float = Field(default=0.1, ge=0)
    cache_write_5m_multiplier: float = Field(default=1.25, ge=0)
    cache_write_1h_multiplier: float = Field(default=2.0, ge=0)
    rank: float | None = None


def default_models() -> dict[str, ModelSpec]:
    """Current Claude models at their published prices: the three routed tiers, and
    others an agent may name (``model="opus-4-1"``)."""

    def spec(model_id: str, inp: float, out: float, rank: float | None = None) -> ModelSpec:
        return ModelSpec(model_id=model_id, input_usd_per_mtok=inp, output_usd_per_mtok=out,
                         rank=rank)

    return {
        "haiku": spec("claude-haiku-4-5", 1.0, 5.0, 1),
        "sonnet": spec("claude-sonnet-4-6", 3.0, 15.0, 2),
        "opus": spec("claude-opus-4-7", 5.0, 25.0, 3),
        "opus-4-5": spec("claude-opus-4-5", 5.0, 25.0),
        "sonnet-4-5": spec("claude-sonnet-4-5", 3.0, 15.0),
        "opus-4-1": spec("claude-opus-4-1", 15.0, 75.0),
    }


def merge_models(value: Any) -> Any:
    """The default catalog with the user's entries laid over it, field by field.

    ``[models.sonnet] model_id = "…"`` changes one field of the default entry; a
    new name adds a model (then ``model_id`` and both prices are required).
    """
    if not isinstance(value, Mapping):
        return value
    merged: dict[str, Any] = {k: v.model_dump() for k, v in default_models().items()}
    for name, entry in value.items():
        if isinstance(entry, Mapping) and name in merged:
            merged[name] = {**merged[name], **entry}
        else:
            merged[name] = entry
    return merged


class OutageWindow(FrozenModel):
    """A scripted outage of the simulated provider: ``model`` answers 529 in the window."""

    model: Tier
    #: seconds after the provider's first call (anyio time, not scaled by ``time_scale``).
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> OutageWindow:
        if self.end_s <= self.start_s:
            raise FieldProblem("end_s", self.end_s,
                               f"must be after start_s ({self.start_s})")
        return self


class SimulatedProviderConfig(FrozenModel):
    """Knobs of the deterministic simulated provider."""

    seed: int = 0
    #: seconds per call, per tier (finite, never negative).
    latency_s: dict[Tier, float] = Field(default_factory=lambda: by_tier(0.4, 1.0, 2.0))
    #: the chance (0–1) that an attempt fails with a 529.
    failure_rate: dict[Tier, float] = Field(default_factory=lambda: by_tier(0.05, 0.02, 0.01))
    #: (lowest, highest) output tokens per call; never negative: a negative count credits
    #: budgets.
    output_tokens: tuple[int, int] = (200, 1500)
    #: latencies are multiplied by this (finite: ``inf`` would never answer).
    time_scale: float = Field(default=1.0, ge=0)
    #: a failed attempt is retried this many times before the 529 is raised (the SDK's
    #: ``max_retries``).
    retries: int = Field(default=2, ge=0)
    #: scripted outages (outage drills, the demo's opus outage).
    outages: tuple[OutageWindow, ...] = ()

    @model_validator(mode="after")
    def _sane(self) -> SimulatedProviderConfig:
        for tier, latency in self.latency_s.items():
            if not (math.isfinite(latency) and latency >= 0):
                raise FieldProblem(f"latency_s.{tier}", latency, "must be finite and >= 0")
        for tier, rate in self.failure_rate.items():
            if not 0 <= rate <= 1:
                raise FieldProblem(f"failure_rate.{tier}", rate, "must be between 0 and 1")
        low, high = self.output_tokens
        if not 0 <= low <= high:
            raise FieldProblem("output_tokens", [low, high], "must be [lowest, highest] with "
                               "0 <= lowest <= highest (a negative count credits budgets)")
        return self


def api_key_problem(value: str) -> str | None:
    """Why ``value`` cannot be an API key, which travels in an HTTP header, or None: a
    space, line break or control character (a key read from a file keeps its newline)
    would make every request carrying it fail, so it is refused at start."""
    if all("!" <= ch <= "~" for ch in value):
        return None
    return "its value holds a space, line break or other character no HTTP header carries"


def base_url_problem(value: str) -> str | None:
    """Why ``value`` cannot be the base URL of a Messages API, or None: an ``http`` or
    ``https`` URL with a host and no space or control character (every call would fail,
    or an HTTP client refuse it with a traceback, only once the run has started)."""
    if not all("!" <= ch <= "~" for ch in value):
        return "holds a space, line break or other character no URL carries"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


def usable_url(value: str | None) -> str | None:
    """``value`` when it is unset or a usable base URL; else the problem, raised."""
    problem = base_url_problem(value) if value is not None else None
    if problem is not None:
        raise ValueError(problem)
    return value


class ProviderConfig(FrozenModel):
    """Which provider serves model calls."""

    kind: Literal["simulated", "anthropic"] = "simulated"
    base_url: str | None = None
    api_key_env: EnvName = "ANTHROPIC_API_KEY"
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

    _a_usable_url = field_validator("base_url")(usable_url)
