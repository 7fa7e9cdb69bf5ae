"""The model catalog and the provider that serves calls (simulated or Anthropic)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from scheduler.config._base import FieldProblem, FrozenModel, Tier, by_tier


class ModelSpec(FrozenModel):
    """One entry of the model catalog: a tier and its Anthropic model and prices."""

    model_id: str
    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)
    context_window: int = Field(default=200_000, gt=0)
    cache_read_multiplier: float = Field(default=0.1, ge=0)
    cache_write_5m_multiplier: float = Field(default=1.25, ge=0)
    cache_write_1h_multiplier: float = Field(default=2.0, ge=0)


def default_models() -> dict[Tier, ModelSpec]:
    return {
        "haiku": ModelSpec(model_id="claude-haiku-4-5", input_usd_per_mtok=1.0,
                           output_usd_per_mtok=5.0),
        "sonnet": ModelSpec(model_id="claude-sonnet-4-6", input_usd_per_mtok=3.0,
                            output_usd_per_mtok=15.0),
        "opus": ModelSpec(model_id="claude-opus-4-7", input_usd_per_mtok=5.0,
                          output_usd_per_mtok=25.0),
    }


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
    latency_s: dict[Tier, float] = Field(default_factory=lambda: by_tier(0.4, 1.0, 2.0))
    #: the chance (0–1) that an attempt fails with a 529.
    failure_rate: dict[Tier, float] = Field(default_factory=lambda: by_tier(0.05, 0.02, 0.01))
    #: completion tokens per call are drawn from this range (low, high).
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
            if latency < 0:
                raise FieldProblem(f"latency_s.{tier}", latency, "must be >= 0")
        for tier, rate in self.failure_rate.items():
            if not 0 <= rate <= 1:
                raise FieldProblem(f"failure_rate.{tier}", rate, "must be between 0 and 1")
        low, high = self.output_tokens
        if not 0 <= low <= high:
            raise FieldProblem("output_tokens", [low, high], "must be [low, high] with "
                               "0 <= low <= high")
        return self


class ProviderConfig(FrozenModel):
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
