"""The real provider: Claude through the official ``anthropic`` SDK (R2.1–R2.4).

* The SDK's own retries are off (``max_retries=0``); this class retries
  instead, so every attempt is timed, reported to ``on_attempt`` (optional;
  the gateway records whole calls, retries counted, in the health monitor) and
  — when a dropped stream had already consumed input — charged.
* ``usage`` is read from plain responses and from streamed ones
  (``message_start`` + ``message_delta``), cache reads and the 5-minute /
  1-hour cache-write split included.
* ``anthropic-ratelimit-*`` headers of every response (errors included) go to
  ``on_rate_limits(pool, info)``; a 429 reports its ``retry-after`` there too,
  so the allocator can shrink the pool.
* Errors are classified as the provider means them (see
  :func:`agents.providers._anthropic_wire.classify`): 429 waits
  ``retry-after``; a spend limit is never retried.
* The SDK sends over :class:`~agents.providers._transport.KeepAliveTransport` (its
  default client when a proxy is configured), and its own OpenTelemetry spans are
  skipped while nothing could record them (no tracing, no tracer provider installed).
* The API key comes from ``api_key`` or the environment variable named by
  ``ProviderConfig.api_key_env``; it lives only inside the SDK client and is
  never logged or shown in ``repr``.
"""

from __future__ import annotations

import inspect
import os
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import anthropic
import anyio
import httpx2
from anthropic import omit

from agents.providers._anthropic_wire import (
    Classified,
    StreamAssembler,
    StreamUsage,
    classify,
    dropped_usage,
    limit_headers,
    rate_limits_from_headers,
    usage_from_api,
    usage_reported,
)
from agents.providers._transport import KeepAliveTransport
from scheduler import Completion, CompletionRequest, ConfigError, ProviderError, Usage
from scheduler.config import ProviderConfig, api_key_problem, base_url_problem
from scheduler.core import Hook, RateLimitInfo, get_logger
from scheduler.observe import tracing_wanted

_log = get_logger("vibe_engine.providers.anthropic")

#: ``on_attempt(model, ok, latency_s, error_kind)`` — one call per HTTP attempt.
AttemptHook = Callable[[str, bool, float, str | None], None]
#: ``on_rate_limits(pool, info)`` — limits learned from a response's headers.
RateLimitHook = Callable[[str, RateLimitInfo], None]
Sleep = Callable[[float], Awaitable[None]]


#: The arguments this SDK's ``messages.create`` takes.
_SDK_ARGS = frozenset(inspect.signature(anthropic.resources.AsyncMessages.create).parameters)


def _wall_now() -> float:
    return datetime.now(tz=UTC).timestamp()


def _http_client() -> httpx2.AsyncClient | None:
    """The SDK's httpx client on :class:`KeepAliveTransport` (httpcore's pool probes every
    idle connection on each request), or ``None`` — the SDK's default client — when the
    environment names a proxy, which httpx honours only on its own transport."""
    proxies = urllib.request.getproxies()
    if any(proxies.get(scheme) for scheme in ("http", "https", "all")):
        return None
    return anthropic.DefaultAsyncHttpxClient(transport=KeepAliveTransport())


def _sdk_telemetry(spans: bool | None) -> Literal[False] | None:
    """The SDK's ``open_telemetry`` option: its default (``None``) while its spans could be
    recorded or carry a trace context — the run traces (``spans``; unset: whether
    ``OTEL_TRACES_EXPORTER`` asks for traces) or the application installed a tracer
    provider — else ``False``: the SDK builds each call's span attributes before it
    learns that nothing records them, about 0.15 ms of CPU per call."""
    wanted = tracing_wanted(False) if spans is None else spans
    return None if wanted or _tracer_provider_installed() else False


def _tracer_provider_installed() -> bool:
    try:
        from opentelemetry import trace
    except ImportError:
        return False
    installed = trace.get_tracer_provider()
    return not isinstance(installed, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


@dataclass(frozen=True, slots=True)
class AnthropicStatistics:
    """Counters of one provider instance."""

    calls: int
    attempts: int
    failures: Mapping[str, int]
    usage: Usage
    last_rate_limits: RateLimitInfo | None


@dataclass(slots=True)
class _Attempt:
    """What one HTTP attempt produced."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    usage: Usage | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    message_id: str = ""


def check_provider(config: ProviderConfig, key: str, given: bool) -> None:
    """Refuse, as ``vibe-engine run`` does at start, a key no HTTP header carries and a
    base URL that is not one: built from Python the provider would otherwise fail every
    call of the run (the key itself is never repeated in the error)."""
    problem = api_key_problem(key)
    if problem is not None:
        if given:
            raise ConfigError("api_key", "<redacted>", problem)
        raise ConfigError("provider.api_key_env", config.api_key_env, problem)
    url = config.base_url
    problem = base_url_problem(url) if url is not None else None
    if problem is not None:
        raise ConfigError("provider.base_url", url, problem)


class AnthropicProvider:
    """:class:`scheduler.Provider` on :class:`anthropic.AsyncAnthropic`."""

    def __init__(
        self,
        config: ProviderConfig | None = None,
        *,
        api_key: str | None = None,
        on_attempt: AttemptHook | None = None,
        on_rate_limits: RateLimitHook | None = None,
        sleep: Sleep = anyio.sleep,
        clock: Callable[[], float] = anyio.current_time,
        wall: Callable[[], float] = _wall_now,
        sdk_spans: bool | None = None,
    ) -> None:
        self.config = config or ProviderConfig(kind="anthropic")
        key = api_key if api_key is not None else os.environ.get(self.config.api_key_env)
        if not key:
            raise ConfigError("provider.api_key_env", self.config.api_key_env,
                              "no API key: the environment variable is not set")
        check_provider(self.config, key, api_key is not None)
        self._client = anthropic.AsyncAnthropic(
            api_key=key, base_url=self.config.base_url, max_retries=0,
            timeout=self.config.timeout_s, http_client=_http_client(),
            open_telemetry=_sdk_telemetry(sdk_spans),
        )
        #: One call per HTTP attempt, and the limits learned from each response.
        self.on_attempt: Hook[[str, bool, float, str | None]] = Hook()
        self.on_rate_limits: Hook[[str, RateLimitInfo]] = Hook()
        if on_attempt is not None:
            self.on_attempt.connect(on_attempt)
        if on_rate_limits is not None:
            self.on_rate_limits.connect(on_rate_limits)
        self._sleep, self._clock, self._wall = sleep, clock, wall
        self._backoff = self.config.retry_backoff_s
        self._max_backoff = self.config.retry_backoff_max_s
        self._cache_min_chars = self.config.cache_system_min_chars
        self._calls = self._attempts = 0
        self._failures: dict[str, int] = {}
        self._usage = Usage()
        self._last_limits: RateLimitInfo | None = None

    def __repr__(self) -> str:
        return f"AnthropicProvider(base_url={str(self._client.base_url)!r}, api_key=<redacted>)"

    # the Provider protocol -------------------------------------------------------------
    async def complete(self, request: CompletionRequest) -> Completion:
        """One call with our own retries; usage summed over every attempt that consumed any."""
        self._calls += 1
        spent: Usage | None = None  # what failed attempts consumed
        started = t0 = self._clock()
        attempts = self.config.max_retries + 1
        for n in range(1, attempts + 1):
            try:
                got = await self._attempt(request)
            except Exception as exc:
                failed = self._failed(request, exc, self._clock() - t0)
                if failed.error.usage is not None:
                    spent = failed.error.usage if spent is None else spent + failed.error.usage
                if not failed.retryable or n == attempts:
                    failed.error.usage = spent if spent is not None and spent.total_tokens else None
                    raise failed.error from exc
                await self._wait_before_retry(request.model, n, failed)
                t0 = self._clock()
                continue
            ended = self._clock()
            self._succeeded(request, got, ended - t0)
            usage = got.usage or Usage()  # none reported: the gateway charges the estimate
            return Completion.from_blocks(
                got.content, usage if spent is None else spent + usage, request.model,
                stop_reason=got.stop_reason, latency_s=ended - started,
                rate_limits=self._last_limits, attempts=n, id=got.message_id,
                usage_missing=got.usage is None,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._client.close()

    # optional pre-call counting (ProviderConfig.count_tokens == "api") -----------------
    async def count_tokens(self, request: CompletionRequest) -> int:
        """Input tokens of ``request`` as the provider counts them (``messages.count_tokens``)."""
        try:
            result = await self._client.messages.count_tokens(
                model=request.model_id, messages=cast(Any, list(request.messages)),
                system=self._system(request), tools=cast(Any, list(request.tools)) or omit,
                **{k: v for k, v in request.options.items() if k in ("tool_choice", "thinking")},
            )
        except Exception as exc:
            raise classify(request.model, exc).error from exc
        return int(result.input_tokens)

    def statistics(self) -> AnthropicStatistics:
        return AnthropicStatistics(self._calls, self._attempts, dict(self._failures),
                                   self._usage, self._last_limits)

    # one attempt -----------------------------------------------------------------------
    def _system(self, request: CompletionRequest) -> Any:
        if not request.system:
            return omit
        ttl = request.hints.get("cache_ttl")
        if ttl is None and len(request.system) >= self._cache_min_chars:
            ttl = "5m"
        if ttl not in ("5m", "1h"):
            return request.system
        return [{"type": "text", "text": request.system,
                 "cache_control": {"type": "ephemeral", "ttl": ttl}}]

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        """The SDK's arguments: messages and tools as sent, options passed through."""
        options = dict(request.options)
        extra = dict(options.pop("extra", None) or {})
        # an option this SDK version does not take as an argument (newer SDKs dropped
        # ``temperature``/``top_p``) still reaches the API, in the body
        extra.update({k: options.pop(k) for k in list(options) if k not in _SDK_ARGS})
        return {
            "model": request.model_id,
            "max_tokens": request.max_tokens,
            "messages": [dict(m) for m in request.messages],
            "system": self._system(request),
            "tools": [dict(t) for t in request.tools] or omit,
            **options,
            **({"extra_body": extra} if extra else {}),
        }

    async def _attempt(self, request: CompletionRequest) -> _Attempt:
        self._attempts += 1
        if request.stream:
            return await self._attempt_stream(request)
        raw = await self._client.messages.with_raw_response.create(**self._params(request))
        # the body read once, as the API sent it: block types the SDK does not know pass
        # through intact, and the SDK's typed Message would only parse the same JSON again
        body = raw.http_response.json()
        if not isinstance(body, dict):
            raise ValueError("the response body is not a message object")
        content = [dict(b) for b in body.get("content") or ()]
        u = body.get("usage")
        usage = usage_from_api(u) if usage_reported(u, "input_tokens", "output_tokens") else None
        return _Attempt(content, body.get("stop_reason") or "end_turn", usage, raw.headers,
                        str(body.get("id") or ""))

    async def _attempt_stream(self, request: CompletionRequest) -> _Attempt:
        raw = await self._client.messages.with_raw_response.create(
            **self._params(request), stream=True
        )
        got = _Attempt(headers=raw.headers)
        acc = StreamUsage()
        blocks = StreamAssembler(on_text=request.on_text)
        finished = False
        stream = await raw.parse()
        try:
            async for event in stream:
                # as sent: a block type this SDK does not know is kept whole, unwarned
                blocks.event(event.model_dump(mode="json", by_alias=True, exclude_unset=True,
                                              warnings=False))
                # an answer without usage (not the API's) is read, not failed
                if event.type == "message_start":
                    acc.start(getattr(event.message, "usage", None))
                elif event.type == "message_delta":
                    acc.delta(getattr(event, "usage", None))
                elif event.type == "message_stop":
                    finished = True
        except Exception as exc:
            _PartialUsage.attach(exc, dropped_usage(acc.seen, blocks))
            raise
        finally:
            # an abandoned stream would hold its connection until the garbage collector
            # finalized the SDK's generator
            await stream.close()
        if not finished:
            exc2 = ProviderError(request.model, "stream ended before message_stop")
            _PartialUsage.attach(exc2, dropped_usage(acc.seen, blocks))
            raise exc2
        got.content, got.usage = blocks.blocks, acc.usage
        got.stop_reason, got.message_id = blocks.stop_reason or "end_turn", blocks.message_id
        return got

    # bookkeeping -----------------------------------------------------------------------
    def _learn_limits(self, model: str, headers: Mapping[str, str] | None,
                      retry_after: float | None = None) -> None:
        if headers is None:
            return
        limits = limit_headers(headers)
        if not limits and retry_after is None:
            return
        info = rate_limits_from_headers(limits, now=self._wall(), retry_after=retry_after)
        if info is None:
            return
        self._last_limits = info
        self.on_rate_limits(model, info)

    def _succeeded(self, request: CompletionRequest, got: _Attempt, latency: float) -> None:
        self._usage += got.usage or Usage()
        self._learn_limits(request.model, got.headers)
        self.on_attempt(request.model, True, latency, None)

    def _failed(self, request: CompletionRequest, exc: Exception, latency: float) -> Classified:
        failed = classify(request.model, exc)
        partial = _PartialUsage.of(exc)
        failed.error.usage = partial
        self._usage += partial or Usage()
        self._failures[failed.kind] = self._failures.get(failed.kind, 0) + 1
        retry_after = getattr(failed.error, "retry_after", None)
        self._learn_limits(request.model, failed.headers, retry_after)
        self.on_attempt(request.model, False, latency, failed.kind)
        return failed

    async def _wait_before_retry(self, model: str, n: int, failed: Classified) -> None:
        delay = getattr(failed.error, "retry_after", None)
        if delay is None:
            delay = min(self._backoff * 2 ** (n - 1), self._max_backoff)
        _log.warning("anthropic_attempt_failed", model=model, attempt=n, error_kind=failed.kind,
                     status=failed.error.status, retry_in_s=round(delay, 3))
        await self._sleep(delay)


class _PartialUsage:
    """Carries the usage a failed stream had reported on the exception that ended it."""

    _ATTR = "_vibe_partial_usage"

    @classmethod
    def attach(cls, exc: BaseException, usage: Usage | None) -> None:
        if usage is not None:
            setattr(exc, cls._ATTR, usage)

    @classmethod
    def of(cls, exc: BaseException) -> Usage | None:
        value = getattr(exc, cls._ATTR, None)
        return value if isinstance(value, Usage) else None
