"""Translating between the Anthropic SDK and vibe-engine's types (pure functions).

* ``usage`` of a message (plain) or of ``message_start`` + ``message_delta``
  events (streamed) → :class:`scheduler.Usage` (R2.1, R2.4);
* ``anthropic-ratelimit-*`` headers → :class:`scheduler.RateLimitInfo`;
* a stream's events → its content blocks (:class:`StreamAssembler`, as the SDK's
  ``MessageStream`` assembles them);
* SDK / transport exceptions → the :mod:`scheduler.core._errors` tree plus a short
  ``error_kind`` the health monitor understands.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import anthropic
import httpx2

from scheduler import ProviderError, Usage
from scheduler.budget import TokenCounter
from scheduler.core import (
    OverloadedError,
    ProviderTimeoutError,
    RateLimitedError,
    RateLimitInfo,
    SpendLimitError,
)

ErrorKind = Literal[
    "rate_limited", "overloaded", "timeout", "spend_limit", "server_error", "connection",
    "client_error",
]
#: Kinds worth another attempt; a spend limit or a bad request never is.
RETRYABLE: frozenset[str] = frozenset(
    {"rate_limited", "overloaded", "timeout", "server_error", "connection"}
)
_DIMENSIONS = ("requests", "tokens", "input-tokens", "output-tokens")


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` of a JSON object, ``obj.name`` of an SDK model (None when absent)."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


#: More tokens than one answer can hold (2^53: past it a float loses whole tokens).
_MAX_COUNT = 2**53


def _count(value: Any) -> int | None:
    """A token count as the API sends one (a whole number, 0 to 2^53), else None: an
    upstream that is not the API may send nonsense (negative, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= _MAX_COUNT or value != int(value):  # NaN fails the first test
        return None
    return int(value)


def _tokens(u: Any, name: str) -> int:
    return _count(_field(u, name)) or 0


def usage_from_api(u: Any) -> Usage:
    """A message's ``usage`` (its JSON object or the SDK model) → :class:`Usage`; the
    cache write split kept; a count that is none counts 0 (see :func:`usage_reported`)."""
    written = _tokens(u, "cache_creation_input_tokens")
    split = _field(u, "cache_creation")
    w1h = _tokens(split, "ephemeral_1h_input_tokens") if split else 0
    w5m = _tokens(split, "ephemeral_5m_input_tokens") if split else 0
    # without a split (older API versions) every write is a 5-minute write, the default TTL
    w5m += max(written - w5m - w1h, 0)
    return Usage(
        prompt_tokens=_tokens(u, "input_tokens"),
        completion_tokens=_tokens(u, "output_tokens"),
        cache_read_tokens=_tokens(u, "cache_read_input_tokens"),
        cache_write_5m_tokens=w5m,
        cache_write_1h_tokens=w1h,
    )


_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
           "cache_creation_input_tokens")


def usage_reported(u: Any, *needed: str) -> bool:
    """Whether ``u`` is a usage to charge by: the ``needed`` counts given, and every count
    it gives one (a body without ``usage``, or with nonsense in it, is charged at the
    call's estimate instead: the provider billed it all the same)."""
    if u is None:
        return False
    if any(_count(_field(u, name)) is None for name in needed):
        return False
    return all(v is None or _count(v) is not None for v in (_field(u, n) for n in _COUNTS))


@dataclass(slots=True)
class StreamUsage:
    """Usage of a streamed message: ``message_start`` then cumulative ``message_delta``s.
    ``usage`` is None until a ``message_delta`` reported the output's count (and the
    input's was reported): a stream without one is charged at the call's estimate."""

    started: Usage | None = None
    final: Usage | None = None
    _input: bool = False

    @property
    def usage(self) -> Usage | None:
        return self.final if self._input else None

    @property
    def seen(self) -> Usage | None:
        """What was reported so far (a dropped stream's partial usage)."""
        return self.final or self.started

    def start(self, u: Any) -> None:
        if usage_reported(u, "input_tokens"):
            self.started, self._input = usage_from_api(u), True

    def delta(self, d: Any) -> None:
        """Apply a ``message_delta`` usage (its counts are cumulative, None = unchanged)."""
        if not usage_reported(d, "output_tokens"):
            return
        cur = self.final or self.started or Usage()
        written = _count(getattr(d, "cache_creation_input_tokens", None))
        w5m = cur.cache_write_5m_tokens
        if written is not None:
            w5m = max(written - cur.cache_write_1h_tokens, 0)
        self._input = self._input or _count(getattr(d, "input_tokens", None)) is not None
        self.final = Usage(
            prompt_tokens=_or(getattr(d, "input_tokens", None), cur.prompt_tokens),
            completion_tokens=_or(getattr(d, "output_tokens", None), cur.completion_tokens),
            cache_read_tokens=_or(getattr(d, "cache_read_input_tokens", None),
                                  cur.cache_read_tokens),
            cache_write_5m_tokens=w5m,
            cache_write_1h_tokens=cur.cache_write_1h_tokens,
        )


def _or(value: Any, default: int) -> int:
    count = _count(value)
    return default if count is None else count


def input_pool_tokens(usage: Usage) -> int:
    """What the provider counts toward its input-tokens limit: input + cache writes.

    Cache reads do not count toward ``anthropic-ratelimit-input-tokens``; output
    tokens are reserved from ``max_tokens`` when a request starts.
    """
    return usage.prompt_tokens + usage.cache_write_tokens


def _int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _reset_in(raw: str | None, now: float) -> float | None:
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(at - now, 0.0)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds) when present."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return max(float(raw) * scale, 0.0)
        except ValueError:
            continue
    return None


_LIMIT_PREFIXES = ("anthropic-ratelimit-", "retry-after")


def limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A response's rate-limit headers, names lower-cased, in one pass (an ``httpx``
    ``Headers`` scans every header on each lookup by name)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        name = name.lower()
        if name.startswith(_LIMIT_PREFIXES):
            out[name] = value
    return out


def rate_limits_from_headers(
    headers: Mapping[str, str], *, now: float, retry_after: float | None = None
) -> RateLimitInfo | None:
    """The ``anthropic-ratelimit-*`` headers as a :class:`RateLimitInfo` (None when absent).

    ``reset_s`` is the soonest reset among the dimensions, in seconds from
    ``now`` (wall clock, seconds since the epoch); a ``retry-after`` lengthens it.
    """
    headers = limit_headers(headers)
    values: dict[str, int | None] = {}
    resets: list[float] = []
    for dim in _DIMENSIONS:
        key = dim.replace("-", "_")
        values[f"{key}_limit"] = _int(headers, f"anthropic-ratelimit-{dim}-limit")
        values[f"{key}_remaining"] = _int(headers, f"anthropic-ratelimit-{dim}-remaining")
        r = _reset_in(headers.get(f"anthropic-ratelimit-{dim}-reset"), now)
        if r is not None:
            resets.append(r)
    if all(v is None for v in values.values()) and not resets and retry_after is None:
        return None
    reset = min(resets) if resets else None
    if retry_after is not None:
        reset = max(reset or 0.0, retry_after)
    return RateLimitInfo(reset_s=reset, **values)


@dataclass(frozen=True, slots=True)
class Classified:
    """A provider failure in our terms."""

    error: ProviderError
    kind: ErrorKind
    headers: Mapping[str, str] | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


def _status_error(model: str, exc: anthropic.APIStatusError) -> Classified:
    status = exc.status_code
    etype = exc.type or ""
    code = exc.error_code or ""
    headers = exc.response.headers
    msg = f"{status} {etype or 'error'}: {exc.api_message or 'no message'}"
    if "spend_limit" in code or status == 402 or etype == "billing_error":
        return Classified(SpendLimitError(model, msg, status=status), "spend_limit", headers)
    if status == 429 or etype == "rate_limit_error":
        err = RateLimitedError(model, msg, retry_after=retry_after_s(headers))
        return Classified(err, "rate_limited", headers)
    if status == 529 or etype == "overloaded_error":
        return Classified(OverloadedError(model, msg, status=529), "overloaded", headers)
    if status in (408, 504) or etype == "timeout_error":
        return Classified(ProviderTimeoutError(model, msg, status=status), "timeout", headers)
    if status >= 500 or etype == "api_error":
        return Classified(ProviderError(model, msg, status=status), "server_error", headers)
    return Classified(ProviderError(model, msg, status=status), "client_error", headers)


def classify(model: str, exc: Exception) -> Classified:
    """Map an SDK or transport exception to our error tree and a health ``error_kind``."""
    if isinstance(exc, anthropic.APIStatusError):
        return _status_error(model, exc)
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return Classified(ProviderTimeoutError(model, "request timed out"), "timeout")
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        return Classified(ProviderError(model, f"connection failed: {type(exc).__name__}"),
                          "connection")
    return Classified(ProviderError(model, f"unexpected response: {type(exc).__name__}"),
                      "server_error")


#: Block types whose ``input`` arrives as ``input_json_delta`` pieces (the SDK's
#: ``TRACKS_TOOL_INPUT``: client and server tool calls).
_TOOL_INPUT_TYPES = frozenset({"tool_use", "server_tool_use"})


@dataclass(slots=True)
class StreamAssembler:
    """Builds a streamed message's content blocks from its events, as the SDK's
    ``MessageStream`` accumulates them.

    Text, thinking and citation deltas extend their block, a signature delta
    replaces the block's signature, and a tool call's ``input`` is the JSON its
    ``input_json_delta`` pieces join into (left as the start event sent it when
    no piece came).  Blocks of types this code does not know are kept as sent.
    ``on_text`` receives each text delta as it arrives.
    """

    on_text: Any = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    message_id: str = ""
    stop_reason: str | None = None
    _json: dict[int, str] = field(default_factory=dict)

    def start(self, message: Mapping[str, Any]) -> None:
        self.message_id = str(message.get("id", ""))
        self.blocks = [dict(b) for b in message.get("content") or ()]

    def block_start(self, index: int, block: Mapping[str, Any]) -> None:
        while len(self.blocks) <= index:
            self.blocks.append({})
        self.blocks[index] = dict(block)

    def block_delta(self, index: int, delta: Mapping[str, Any]) -> None:
        block = self.blocks[index]
        kind = delta.get("type")
        if kind == "text_delta" and block.get("type") == "text":
            block["text"] = str(block.get("text", "")) + str(delta.get("text", ""))
            if self.on_text is not None:
                self.on_text(str(delta.get("text", "")))
        elif kind == "input_json_delta" and block.get("type") in _TOOL_INPUT_TYPES:
            self._json[index] = self._json.get(index, "") + str(delta.get("partial_json", ""))
        elif kind == "thinking_delta" and block.get("type") == "thinking":
            block["thinking"] = str(block.get("thinking", "")) + str(delta.get("thinking", ""))
        elif kind == "signature_delta" and block.get("type") == "thinking":
            block["signature"] = delta.get("signature")
        elif kind == "citations_delta" and block.get("type") == "text":
            block["citations"] = [*(block.get("citations") or ()), delta.get("citation")]

    def streamed(self) -> str:
        """The output streamed so far, as text: a dropped stream's billed output."""
        parts = [*self._json.values()]
        for block in self.blocks:
            kind = block.get("type")
            if kind == "text" or kind == "thinking":
                parts.append(str(block.get(kind, "")))
            elif kind in _TOOL_INPUT_TYPES and block.get("input"):
                parts.append(json.dumps(block["input"]))
        return "".join(parts)

    def block_stop(self, index: int) -> None:
        raw = self._json.pop(index, "")
        if raw:
            try:
                self.blocks[index]["input"] = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"tool input of block {index} is not JSON: {raw[:200]}") from exc

    def event(self, event: Mapping[str, Any]) -> None:
        """Apply one stream event (its JSON as a mapping)."""
        kind = event.get("type")
        if kind == "message_start":
            self.start(event.get("message") or {})
        elif kind == "content_block_start":
            self.block_start(int(event["index"]), event.get("content_block") or {})
        elif kind == "content_block_delta":
            self.block_delta(int(event["index"]), event.get("delta") or {})
        elif kind == "content_block_stop":
            self.block_stop(int(event["index"]))
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason


_COUNTER: list[TokenCounter] = []  # made at the first dropped stream: tiktoken loads slowly


def dropped_usage(seen: Usage | None, blocks: StreamAssembler) -> Usage | None:
    """What a stream cut before its last ``message_delta`` consumed: what it reported
    (``message_start``'s input, and the 1 output token counted there), its output at
    least the tokens that streamed -- the provider billed them though the count that
    would have said so never came.  None when not even the input was reported (the
    gateway then charges nothing more than the attempts before)."""
    if seen is None:
        return None
    text = blocks.streamed()
    if not text:
        return seen
    if not _COUNTER:
        _COUNTER.append(TokenCounter(use_cache=False))
    out = _COUNTER[0].count_text(text)
    return seen if out <= seen.completion_tokens else replace(seen, completion_tokens=out)
