"""What the runtime asks of a model provider (the concrete ones live in ``agents.providers``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from scheduler.core._errors import ConfigError
from scheduler.core._frozen import maker
from scheduler.core._hooks import Hook
from scheduler.core._usage import Usage

#: A message of the Messages API: ``role`` and ``content``, a string or a list of content
#: blocks of any kind (text, image, document, tool_use, tool_result, thinking …), sent as is.
Message = Mapping[str, Any]
#: One content block as the Messages API defines it (``{"type": "text", "text": …}`` …).
ContentBlock = Mapping[str, Any]
#: Receives each text delta of a streamed answer as it arrives.
TextSink = Callable[[str], None]

#: Request options passed through to the provider as the Messages API names them.
REQUEST_OPTIONS: frozenset[str] = frozenset({
    "temperature", "top_p", "top_k", "stop_sequences", "tool_choice", "thinking", "metadata",
    "service_tier", "output_config",
})


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The request options, or a :class:`ConfigError` naming one that is not known.

    An unknown option is an error rather than silently dropped: a misspelt
    ``temprature`` would otherwise change nothing and say nothing.  Options the
    runtime does not know yet go in ``extra`` (sent as the SDK's ``extra_body``).
    """
    if not options:  # most calls pass none
        return {}
    unknown = sorted(set(options) - REQUEST_OPTIONS - {"extra"})
    if unknown:
        raise ConfigError("options", unknown[0],
                          f"unknown request option; known: {sorted(REQUEST_OPTIONS)} "
                          "(others go in options['extra'])")
    return dict(options)


def thinking_budget(options: Mapping[str, Any]) -> int:
    """The extended-thinking budget an ``options['thinking']`` asks for (0 when off)."""
    thinking = options.get("thinking")
    if thinking is None:  # most calls: no ABC check of None against Mapping
        return 0
    if isinstance(thinking, Mapping) and thinking.get("type") == "enabled":
        return int(thinking.get("budget_tokens") or 0)
    return 0


@dataclass(slots=True)
class Passthrough:
    """A call forwarded as a client sent it (``vibe-engine serve``, #21).

    ``body`` is the client's Messages API request (forwarded unchanged, but for the
    model when the gateway routed it to another) and ``raw`` its bytes; ``headers``
    are the client headers to forward (``anthropic-beta`` …).  The provider answers
    through the sinks: ``on_status`` once with the upstream status and headers, then
    ``on_bytes`` with the response body as it arrives (SSE events of a stream).
    """

    body: Mapping[str, Any]
    raw: bytes
    #: The catalog name the client's model maps to ("" when the gateway routed it).
    model: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The client's query string (``beta=true``), forwarded with the request.
    query: str = ""
    #: Called just before the request goes upstream: from then on the call is paid for.
    on_send: Callable[[], None] | None = None
    on_status: Callable[[int, Mapping[str, str]], None] | None = None
    on_bytes: Callable[[bytes], None] | None = None


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
    #: Messages API options passed through (see :data:`REQUEST_OPTIONS`; ``extra`` → extra_body).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Called with each text delta of a streamed answer (``stream=True``).
    on_text: TextSink | None = None
    #: Set when the call forwards a client's request as it is (see :class:`Passthrough`).
    passthrough: Passthrough | None = None


#: ``CompletionRequest(*every field in order)`` at about half the cost (see ``_frozen``):
#: every attempt of a model call makes one.
make_completion_request = maker(CompletionRequest)


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
    """A finished call: the answer's content blocks, the provider-reported usage, signals.

    ``content`` holds every block of the answer as the API sent it (``text``,
    ``tool_use``, ``thinking``, ``redacted_thinking`` and any type this runtime
    does not know, passed through intact); ``text`` is its text blocks joined.
    A completion built from text alone gets one text block.  ``stop_reason`` is
    the API's (``end_turn``, ``tool_use``, ``max_tokens``, ``pause_turn``,
    ``refusal`` …) and ``id`` the provider's message id.
    """

    text: str
    usage: Usage
    model: str
    stop_reason: str = "end_turn"
    latency_s: float = 0.0
    #: A quality score in [0, 1] when the provider or a judge supplies one (R4.3).
    quality: float | None = None
    rate_limits: RateLimitInfo | None = None
    attempts: int = 1
    content: tuple[ContentBlock, ...] = ()
    id: str = ""
    #: The answer reported no usage (a body without ``usage``, a stream whose
    #: ``message_delta`` carried none): ``usage`` then holds only what was reported (of
    #: failed attempts before it), and the gateway charges the call's estimate on top.
    usage_missing: bool = False

    def __post_init__(self) -> None:
        if not self.content and self.text:
            object.__setattr__(self, "content", ({"type": "text", "text": self.text},))

    @classmethod
    def from_blocks(cls, content: Sequence[ContentBlock], usage: Usage, model: str,
                    **fields: Any) -> Completion:
        """A completion whose ``text`` is the text blocks of ``content`` joined."""
        text = "".join(str(b.get("text", "")) for b in content if b.get("type") == "text")
        return cls(text, usage, model, content=tuple(content), **fields)

    @property
    def tool_uses(self) -> list[ContentBlock]:
        """The ``tool_use`` blocks the model asked to run, in order."""
        return [b for b in self.content if b.get("type") == "tool_use"]

    def message(self) -> dict[str, Any]:
        """The assistant turn to append to the conversation: every block, thinking included
        (the API wants thinking blocks sent back unchanged with their tool results)."""
        return {"role": "assistant", "content": [dict(b) for b in self.content]}


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
