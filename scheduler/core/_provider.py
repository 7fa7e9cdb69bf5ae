"""What the runtime asks of a model provider (the concrete ones live in ``agents.providers``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from scheduler.core._hooks import Hook
from scheduler.core._usage import Usage

Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One model call, already routed to a tier (``model``) and its provider id."""

    model: str
    model_id: str
    messages: Sequence[Message]
    system: str = ""
    tools: Sequence[Mapping[str, Any]] = ()
    max_tokens: int = 1024
    stream: bool = False
    task_id: str = ""
    #: Hints for the simulated provider and quality scoring (difficulty 0..1 …).
    hints: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """Provider limits learned from ``anthropic-ratelimit-*`` headers (None = not sent)."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    input_tokens_limit: int | None = None
    input_tokens_remaining: int | None = None
    output_tokens_limit: int | None = None
    output_tokens_remaining: int | None = None
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished call: text, the provider-reported usage, and quality signals."""

    text: str
    usage: Usage
    model: str
    stop_reason: str = "end_turn"
    latency_s: float = 0.0
    #: A quality score in [0, 1] when the provider or a judge supplies one (R4.3).
    quality: float | None = None
    rate_limits: RateLimitInfo | None = None
    attempts: int = 1


@runtime_checkable
class Provider(Protocol):
    """A model provider. Raises :class:`~scheduler.ProviderError` subclasses on failure."""

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def aclose(self) -> None: ...


#: ``on_rate_limits(pool_or_model, info)``: limits a provider learned from a response.
RateLimitHook = Callable[[str, RateLimitInfo], None]


@runtime_checkable
class ReportsRateLimits(Protocol):
    """A provider that reports the limits it learns; the composition root connects to it."""

    on_rate_limits: Hook[[str, RateLimitInfo]]
