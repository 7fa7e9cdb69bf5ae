"""What the fake Anthropic API answers: usage, cache, rate limits, faults (pure logic).

The HTTP layer lives in :mod:`agents.fake_api._server`; everything here is
plain data and deterministic arithmetic so the tests can predict it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from agents.fake_api._script import SERVED_MODELS, served
from scheduler.budget import TokenCounter

FaultKind = Literal[
    "rate_limit", "overloaded", "server_error", "slow", "drop_stream", "stream_error",
    "spend_limit", "no_usage", "drop_body",
]

#: The Anthropic error ``type`` and HTTP status of each status fault.
FAULT_STATUS: dict[str, tuple[int, str]] = {
    "rate_limit": (429, "rate_limit_error"),
    "spend_limit": (429, "rate_limit_error"),
    "overloaded": (529, "overloaded_error"),
    "server_error": (500, "api_error"),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault, applied to the next matching request(s).

    * ``rate_limit``: 429 ``rate_limit_error`` with ``retry-after: retry_after``;
    * ``spend_limit``: 429 whose ``error.details.error_code`` is
      ``enforced_spend_limit_reached`` (never to be retried);
    * ``overloaded``: 529 ``overloaded_error``; ``server_error``: 500 ``api_error``;
    * ``slow``: wait ``delay_s`` before answering (then answer normally);
    * ``drop_stream``: a streamed answer whose connection closes after
      ``after_events`` events (``message_start``, ``content_block_start`` and ``ping``
      come before the first delta), billed all the same: ``reported`` has its input and
      the output streamed (the deltas' text counted, at least 1); non-streamed
      requests: closed after the headers, before any byte of the body, not billed;
    * ``drop_body``: a plain answer cut mid-body: 200, its headers and half the body,
      then the connection closes; billed all the same (``reported`` has all its usage;
      streamed requests: answered whole);
    * ``stream_error``: a streamed answer that sends an ``error`` event
      (``overloaded_error``) after ``after_events`` events, as the API does when
      a model is overloaded mid-answer (non-streamed requests: a 529);
    * ``no_usage``: the answer comes whole but without ``usage`` (a body without it; a
      stream whose ``message_start`` and ``message_delta`` carry none), as a proxy or a
      compatible server that is not the API may send it; it is billed all the same
      (``reported`` has its usage).
    """

    kind: FaultKind
    retry_after: float = 0.05
    delay_s: float = 1.0
    after_events: int = 2
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Reported:
    """The usage the fake server reported for one request (what a client should charge)."""

    request_id: str
    model: str
    stream: bool
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_5m: int
    cache_creation_1h: int
    complete: bool = True

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.cache_creation_5m + self.cache_creation_1h

    @property
    def total_tokens(self) -> int:
        return (self.input_tokens + self.output_tokens + self.cache_read_input_tokens
                + self.cache_creation_input_tokens)


@dataclass(frozen=True, slots=True)
class FakeApiConfig:
    """Behaviour of the fake server.

    ``input_ratio``: the server's input count is ``round(tiktoken_raw × ratio)``
    (Claude's tokenizer counts more than ``cl100k_base``); ``output_tokens``:
    output per answer (capped by ``max_tokens``); limits are per minute and
    appear in the ``anthropic-ratelimit-*`` headers unless ``send_rate_limits`` is off
    (as behind a proxy that strips them).
    """

    input_ratio: float = 1.2
    output_tokens: int = 40
    requests_limit: int = 4000
    tokens_limit: int = 2_000_000
    input_tokens_limit: int = 2_000_000
    output_tokens_limit: int = 400_000
    api_key: str | None = None
    send_rate_limits: bool = True
    #: Model ids served; any other gets the API's 404 ``not_found_error`` (None: any id).
    models: tuple[str, ...] | None = SERVED_MODELS


@dataclass(frozen=True, slots=True)
class Plan:
    """The usage an answer will report, computed from the request."""

    input_tokens: int
    output_tokens: int
    cache_read: int
    cache_5m: int
    cache_1h: int
    max_tokens: int


def _split_system(system: Any) -> tuple[str, list[tuple[str, str]]]:
    """Uncached system text and the cached blocks as (text, ttl)."""
    if isinstance(system, str):
        return system, []
    plain: list[str] = []
    cached: list[tuple[str, str]] = []
    for block in system or ():
        if not isinstance(block, Mapping):
            continue
        text = str(block.get("text", ""))
        cc = block.get("cache_control")
        if isinstance(cc, Mapping):
            cached.append((text, str(cc.get("ttl", "5m"))))
        else:
            plain.append(text)
    return "\n".join(plain), cached


@dataclass
class FakeState:
    """Mutable server state, shared by the server thread and its controller (``lock``)."""

    config: FakeApiConfig = field(default_factory=FakeApiConfig)
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[Fault] = field(default_factory=list)
    reported: list[Reported] = field(default_factory=list)
    requests: int = 0
    count_requests: int = 0
    cached: set[str] = field(default_factory=set)
    used_requests: int = 0
    used_input: int = 0
    used_output: int = 0
    window: datetime | None = None
    counter: TokenCounter = field(default_factory=lambda: TokenCounter(use_cache=False))
    #: Scripted response bodies still to serve, in order (``--script``).
    script: list[dict[str, Any]] = field(default_factory=list)
    scripted: bool = False
    #: The last ``POST /v1/messages`` body received (what a client really sent).
    last_body: dict[str, Any] | None = None
    #: Every ``POST /v1/messages`` body received while a script is loaded (scripts are
    #: short; a generating server keeps none): what a replayed conversation really sent.
    scripted_bodies: list[dict[str, Any]] = field(default_factory=list)

    def next_scripted(self) -> dict[str, Any] | None:
        """The next scripted body; None when no script was loaded.  Raises ``LookupError``
        when a loaded script has run out."""
        with self.lock:
            if not self.scripted:
                return None
            if not self.script:
                raise LookupError("the fake API's script has no response left")
            return self.script.pop(0)

    def serves(self, model: str) -> bool:
        return self.config.models is None or served(model, self.config.models)

    def take_fault(self, model: str) -> Fault | None:
        with self.lock:
            for i, f in enumerate(self.faults):
                if f.model is None or f.model == model:
                    return self.faults.pop(i)
        return None

    def input_count(self, body: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]]]:
        """The server's input count of everything except cached blocks."""
        plain, cached = _split_system(body.get("system", ""))
        messages: Sequence[Mapping[str, Any]] = body.get("messages", ())
        raw = self.counter.count_prompt(messages, system=plain, tools=body.get("tools") or ())
        return round(raw * self.config.input_ratio), cached

    def plan(self, body: Mapping[str, Any]) -> Plan:
        n_input, cached = self.input_count(body)
        read = w5 = w1 = 0
        with self.lock:
            for text, ttl in cached:
                n = round(self.counter.count_text(text) * self.config.input_ratio)
                key = hashlib.blake2b(f"{body.get('model')}:{ttl}:{text}".encode()).hexdigest()
                if key in self.cached:
                    read += n
                else:
                    self.cached.add(key)
                    if ttl == "1h":
                        w1 += n
                    else:
                        w5 += n
        max_tokens = int(body.get("max_tokens", 1024))
        out = max(1, min(self.config.output_tokens, max_tokens))
        return Plan(n_input, out, read, w5, w1, max_tokens)

    def admit(self, plan: Plan, max_tokens: int, now: datetime) -> None:
        """Count a request as the API does when it starts: input + cache writes (not
        reads) toward input tokens, ``max_tokens`` reserved toward output tokens."""
        with self.lock:
            window = now.replace(second=0, microsecond=0)
            if window != self.window:
                self.window = window
                self.used_requests = self.used_input = self.used_output = 0
            self.used_requests += 1
            self.used_input += plan.input_tokens + plan.cache_5m + plan.cache_1h
            self.used_output += max_tokens

    def record(self, rec: Reported, max_tokens: int) -> None:
        """Record what was reported and give back the unused output reservation."""
        with self.lock:
            self.reported.append(rec)
            self.used_output -= max_tokens - rec.output_tokens

    def rate_limit_headers(self, now: datetime) -> dict[str, str]:
        """``anthropic-ratelimit-*`` headers; the window resets every minute."""
        c = self.config
        if not c.send_rate_limits:
            return {}
        reset = (now.replace(second=0, microsecond=0) + timedelta(minutes=1)).isoformat()
        reset = reset.replace("+00:00", "Z")
        with self.lock:
            req_left = max(c.requests_limit - self.used_requests, 0)
            in_left = max(c.input_tokens_limit - self.used_input, 0)
            out_left = max(c.output_tokens_limit - self.used_output, 0)
            tok_left = max(c.tokens_limit - self.used_input - self.used_output, 0)
        values = {
            "requests": (c.requests_limit, req_left),
            "tokens": (c.tokens_limit, tok_left),
            "input-tokens": (c.input_tokens_limit, in_left),
            "output-tokens": (c.output_tokens_limit, out_left),
        }
        headers: dict[str, str] = {}
        for name, (limit, left) in values.items():
            headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(left)
            headers[f"anthropic-ratelimit-{name}-reset"] = reset
        return headers


def usage_json(plan: Plan, *, output_tokens: int) -> dict[str, Any]:
    """The ``usage`` object of a message as the API sends it."""
    return {
        "input_tokens": plan.input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": plan.cache_read,
        "cache_creation_input_tokens": plan.cache_5m + plan.cache_1h,
        "cache_creation": {
            "ephemeral_5m_input_tokens": plan.cache_5m,
            "ephemeral_1h_input_tokens": plan.cache_1h,
        },
        "service_tier": "standard",
    }


def answer_text(n_tokens: int) -> list[str]:
    """Deterministic answer pieces, one per output token."""
    words = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
    return [(" " if i else "") + words[i % len(words)] for i in range(n_tokens)]


def scripted_output_tokens(counter: TokenCounter, content: Sequence[Mapping[str, Any]]) -> int:
    """Output tokens of a scripted answer that states none: its blocks, counted."""
    return max(sum(counter.count_block(b) for b in content), 1)


def error_body(kind: str, message: str, error_code: str | None = None) -> bytes:
    err: dict[str, Any] = {"type": kind, "message": message}
    if error_code:
        err["details"] = {"error_code": error_code}
    return json.dumps({"type": "error", "error": err}).encode()


def now_utc() -> datetime:
    return datetime.now(tz=UTC)
