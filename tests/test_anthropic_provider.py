"""AnthropicProvider: the real SDK over real HTTP against the fake API (R2.1–R2.4).

Nothing of the SDK is mocked: requests leave through ``anthropic.AsyncAnthropic``
and its HTTP stack to a server on 127.0.0.1. Retry waits go through an injected
sleep that records them, so no test waits for real time.
"""

from __future__ import annotations

import anthropic
import pytest

from agents.fake_api import FakeAnthropicServer, Fault
from agents.providers import AnthropicProvider, input_pool_tokens
from agents.providers._anthropic_wire import limit_headers, rate_limits_from_headers
from scheduler import ProviderError, Usage
from scheduler.budget import TokenCounter
from scheduler.config import ProviderConfig
from scheduler.core import OverloadedError, ProviderTimeoutError, RateLimitedError, SpendLimitError
from tests._anthropic_helpers import (
    SECRET_KEY,
    Recorder,
    as_usage,
    fake_api,
    provider_for,
    reported_sum,
    request,
)

# the fake Anthropic API is a real HTTP server: its sockets need real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
__all__ = ["fake_api"]

LONG_SYSTEM = "You are a careful reviewer of scheduler code. " * 120  # > 4096 chars


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_r2_1_usage_is_exactly_what_the_server_reported(
    fake_api: FakeAnthropicServer, stream: bool
) -> None:
    """R2.1: plain and streamed calls return the server's usage, field by field."""
    provider = provider_for(fake_api)
    try:
        c = await provider.complete(request("Summarise the lease protocol.", stream=stream))
    finally:
        await provider.aclose()
    (reported,) = fake_api.reported
    assert reported.stream is stream
    assert c.usage == as_usage(reported)
    assert c.usage.prompt_tokens > 0 and c.usage.completion_tokens == 40
    assert c.text.startswith("alpha beta") and c.attempts == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_r2_4_cache_reads_and_5m_1h_writes(
    fake_api: FakeAnthropicServer, stream: bool
) -> None:
    """R2.4: cache writes keep their 5-minute / 1-hour split, later calls read the cache."""
    provider = provider_for(fake_api)
    try:
        first = await provider.complete(request(system=LONG_SYSTEM, stream=stream))
        second = await provider.complete(request(system=LONG_SYSTEM, stream=stream))
        hour = await provider.complete(request(system=LONG_SYSTEM + "!", stream=stream,
                                               cache_ttl="1h"))
    finally:
        await provider.aclose()
    r1, r2, r3 = fake_api.reported
    assert first.usage == as_usage(r1) and first.usage.cache_write_5m_tokens > 1000
    assert first.usage.cache_read_tokens == 0 and first.usage.cache_write_1h_tokens == 0
    assert second.usage == as_usage(r2)
    assert second.usage.cache_read_tokens == first.usage.cache_write_5m_tokens
    assert second.usage.cache_write_tokens == 0
    assert hour.usage == as_usage(r3) and hour.usage.cache_write_1h_tokens > 1000
    assert hour.usage.cache_write_5m_tokens == 0


async def test_rate_limit_headers_reach_the_allocator_hook(fake_api: FakeAnthropicServer) -> None:
    """anthropic-ratelimit-* headers → RateLimitInfo for the model's pool; the input pool
    counts input + cache writes (not cache reads) as the provider does."""
    fake_api.configure(input_tokens_limit=50_000, output_tokens_limit=8_000)
    rec = Recorder()
    provider = provider_for(fake_api, rec)
    try:
        c = await provider.complete(request(system=LONG_SYSTEM, stream=True))
        await provider.complete(request(system=LONG_SYSTEM))
    finally:
        await provider.aclose()
    pool, info = rec.limits[0]
    assert pool == "sonnet"
    assert info.input_tokens_limit == 50_000 and info.output_tokens_limit == 8_000
    assert info.requests_limit == 4000 and info.requests_remaining == 3999
    # the server counts a call when it starts: input + cache writes (not reads), and
    # max_tokens reserved for output (the streamed headers precede the answer)
    assert info.input_tokens_remaining == 50_000 - input_pool_tokens(c.usage)
    assert info.output_tokens_remaining == 8_000 - 256
    assert info.reset_s is not None and 0 <= info.reset_s <= 60
    _, info2 = rec.limits[1]
    second = fake_api.reported[1]
    assert second.cache_read_input_tokens > 0
    assert info2.input_tokens_remaining == (
        50_000 - input_pool_tokens(c.usage) - second.input_tokens
    )
    # the plain answer's headers follow it: both outputs settled to what was generated
    assert info2.output_tokens_remaining == 8_000 - 2 * 40
    assert provider.statistics().last_rate_limits == info2


async def test_429_waits_retry_after_and_charges_nothing_extra(
    fake_api: FakeAnthropicServer,
) -> None:
    """A 429 rate_limit_error: wait retry-after, shrink the pool, retry; usage = one answer."""
    fake_api.inject(Fault("rate_limit", retry_after=0.05))
    rec = Recorder()
    provider = provider_for(fake_api, rec)
    try:
        c = await provider.complete(request())
    finally:
        await provider.aclose()
    assert rec.sleeps == [0.05]
    assert rec.kinds == ["rate_limited", None]
    assert fake_api.requests == 2 and len(fake_api.reported) == 1
    assert c.usage == reported_sum(fake_api) and c.attempts == 2
    pool, shrink = rec.limits[0]
    assert pool == "sonnet" and shrink.requests_remaining == 0
    assert shrink.input_tokens_remaining == 0 and shrink.reset_s is not None
    assert shrink.reset_s >= 0.05


async def test_429_exhausting_retries_raises_rate_limited(fake_api: FakeAnthropicServer) -> None:
    fake_api.inject(Fault("rate_limit", retry_after=0.02), times=3)
    rec = Recorder()
    provider = provider_for(fake_api, rec, max_retries=2)
    try:
        with pytest.raises(RateLimitedError) as info:
            await provider.complete(request())
    finally:
        await provider.aclose()
    assert info.value.retry_after == pytest.approx(0.02)
    assert isinstance(info.value.__cause__, anthropic.RateLimitError)
    assert rec.sleeps == [0.02, 0.02] and fake_api.reported == []
    assert info.value.usage is None


async def test_spend_limit_is_never_retried(fake_api: FakeAnthropicServer) -> None:
    """A 429 whose error code is a spend limit pauses the task: no retry, no wait."""
    fake_api.inject(Fault("spend_limit"))
    rec = Recorder()
    provider = provider_for(fake_api, rec, max_retries=3)
    try:
        with pytest.raises(SpendLimitError) as info:
            await provider.complete(request())
    finally:
        await provider.aclose()
    assert not isinstance(info.value, RateLimitedError)
    assert info.value.status == 429
    assert rec.kinds == ["spend_limit"] and rec.sleeps == []
    assert fake_api.requests == 1


async def test_529_overloaded_is_reported_to_health(fake_api: FakeAnthropicServer) -> None:
    """529 overloaded_error: every attempt is seen by on_attempt; backoff between them."""
    fake_api.inject(Fault("overloaded"), times=3)
    rec = Recorder()
    provider = provider_for(fake_api, rec, max_retries=2)
    try:
        with pytest.raises(OverloadedError) as info:
            await provider.complete(request())
    finally:
        await provider.aclose()
    assert info.value.status == 529
    assert isinstance(info.value.__cause__, anthropic.OverloadedError)
    assert rec.attempts == [("sonnet", False, "overloaded")] * 3
    assert rec.sleeps == [0.5, 1.0]
    assert provider.statistics().failures == {"overloaded": 3}


async def test_500_is_retried_then_succeeds(fake_api: FakeAnthropicServer) -> None:
    fake_api.inject(Fault("server_error"))
    rec = Recorder()
    provider = provider_for(fake_api, rec)
    try:
        c = await provider.complete(request(stream=True))
    finally:
        await provider.aclose()
    assert rec.kinds == ["server_error", None] and c.attempts == 2
    assert c.usage == reported_sum(fake_api)


async def test_timeout_is_classified_for_health(fake_api: FakeAnthropicServer) -> None:
    """A slow answer past ProviderConfig.timeout_s → ProviderTimeoutError, seen by health."""
    fake_api.inject(Fault("slow", delay_s=30.0))
    rec = Recorder()
    provider = provider_for(fake_api, rec, timeout_s=0.2, max_retries=0)
    try:
        with pytest.raises(ProviderTimeoutError) as info:
            await provider.complete(request())
    finally:
        await provider.aclose()
    assert isinstance(info.value.__cause__, anthropic.APITimeoutError)
    assert rec.kinds == ["timeout"]


async def test_dropped_stream_charges_what_was_consumed_and_retries(
    fake_api: FakeAnthropicServer,
) -> None:
    """A connection dropped after message_start: its input is charged, the retry too."""
    fake_api.inject(Fault("drop_stream", after_events=2))
    rec = Recorder()
    provider = provider_for(fake_api, rec)
    try:
        c = await provider.complete(request(stream=True))
    finally:
        await provider.aclose()
    partial, full = fake_api.reported
    assert not partial.complete and full.complete
    assert rec.kinds == ["connection", None]
    assert c.usage == as_usage(partial) + as_usage(full) == reported_sum(fake_api)


async def test_dropped_stream_on_last_attempt_carries_its_usage(
    fake_api: FakeAnthropicServer,
) -> None:
    fake_api.inject(Fault("drop_stream", after_events=1))
    provider = provider_for(fake_api, max_retries=0)
    try:
        with pytest.raises(ProviderError) as info:
            await provider.complete(request(stream=True))
    finally:
        await provider.aclose()
    assert info.value.usage == reported_sum(fake_api)
    assert info.value.usage.prompt_tokens > 0


async def test_r2_2_count_tokens_through_the_api(fake_api: FakeAnthropicServer) -> None:
    """R2.2 alternative: messages.count_tokens gives the provider's own input count."""
    provider = provider_for(fake_api, count_tokens="api")
    try:
        req = request("Count me, then answer me.", system="Be brief.")
        counted = await provider.count_tokens(req)
        c = await provider.complete(req)
    finally:
        await provider.aclose()
    assert counted == c.usage.prompt_tokens


async def test_r2_3_calibration_converges_under_10_percent(fake_api: FakeAnthropicServer) -> None:
    """R2.3: the server counts 1.3× tiktoken; after a few reconciled calls the estimate
    error is under 10 %."""
    fake_api.configure(input_ratio=1.3)
    counter = TokenCounter()
    provider = provider_for(fake_api)
    errors: list[float] = []
    try:
        for i in range(5):
            req = request(f"Call {i}: explain lease expiry and fairness in the allocator. " * 8,
                          system="You review schedulers.")
            est = counter.estimate("sonnet", req.messages, system=req.system)
            c = await provider.complete(req)
            errors.append(counter.reconcile(est, c.usage.prompt_tokens).error)
    finally:
        await provider.aclose()
    assert errors[0] > 0.10
    assert all(e < 0.10 for e in errors[2:]), errors
    assert counter.factor("sonnet") == pytest.approx(1.3, rel=0.05)


async def test_usage_totals_in_statistics(fake_api: FakeAnthropicServer) -> None:
    provider = provider_for(fake_api)
    try:
        for stream in (False, True, False):
            await provider.complete(request(stream=stream))
    finally:
        await provider.aclose()
    stats = provider.statistics()
    assert (stats.calls, stats.attempts) == (3, 3)
    assert stats.usage == reported_sum(fake_api) != Usage()


@pytest.mark.parametrize("anyio_backend", ["trio"])  # trio in real time
async def test_provider_runs_on_trio_too(fake_api: FakeAnthropicServer) -> None:
    """Backend-neutral anyio: the same provider works under trio (streamed, with a 429)."""
    fake_api.inject(Fault("rate_limit", retry_after=0.01))
    rec = Recorder()
    provider = provider_for(fake_api, rec)
    try:
        usage = (await provider.complete(request(stream=True))).usage
    finally:
        await provider.aclose()
    assert usage == reported_sum(fake_api) and rec.kinds == ["rate_limited", None]


async def test_overloaded_error_event_mid_stream(fake_api: FakeAnthropicServer) -> None:
    """An ``error`` event (overloaded_error) inside a 200 stream is a 529 for health; the
    input message_start reported is charged, and the retry succeeds."""
    fake_api.inject(Fault("stream_error", after_events=3))
    rec = Recorder()
    provider = provider_for(fake_api, rec)
    try:
        c = await provider.complete(request(stream=True))
    finally:
        await provider.aclose()
    assert rec.kinds == ["overloaded", None]
    partial, _ = fake_api.reported
    assert not partial.complete
    assert c.usage == reported_sum(fake_api)


async def test_r5_3_no_rate_limit_headers_reports_no_limits_and_reads_no_wall_clock(
    fake_api: FakeAnthropicServer,
) -> None:
    """R5.3 quota from headers: behind a proxy that strips ``anthropic-ratelimit-*`` the
    call succeeds and no limit is reported (the wall clock, needed only for their reset
    times, is not read); once the headers come back they reach the hook again."""
    fake_api.configure(send_rate_limits=False)
    rec, walls = Recorder(), []

    def wall() -> float:
        walls.append(1)
        return 0.0

    provider = AnthropicProvider(
        ProviderConfig(kind="anthropic", base_url=fake_api.base_url), api_key=SECRET_KEY,
        on_rate_limits=rec.on_rate_limits, wall=wall)
    try:
        bare = await provider.complete(request())
        assert bare.usage == as_usage(fake_api.reported[0]) and bare.rate_limits is None
        assert rec.limits == [] and walls == []
        assert provider.statistics().last_rate_limits is None
        fake_api.configure(send_rate_limits=True)
        limited = await provider.complete(request())
    finally:
        await provider.aclose()
    assert walls == [1] and len(rec.limits) == 1
    assert limited.rate_limits == rec.limits[0][1] and limited.rate_limits.requests_limit == 4000


def test_r5_3_rate_limit_headers_read_in_any_case() -> None:
    """R5.3: header names are case-insensitive, in a plain mapping as in the SDK's."""
    info = rate_limits_from_headers(
        {"Anthropic-RateLimit-Requests-Limit": "50", "anthropic-ratelimit-requests-remaining": "49",
         "Anthropic-Ratelimit-Tokens-Reset": "1970-01-01T00:00:30Z", "Retry-After": "40",
         "Content-Type": "application/json"}, now=10.0)
    assert info is not None
    assert (info.requests_limit, info.requests_remaining) == (50, 49)
    assert info.reset_s == 20.0 and info.tokens_limit is None
    assert limit_headers({"Content-Type": "application/json", "Retry-After-Ms": "5"}) == {
        "retry-after-ms": "5"}
    assert rate_limits_from_headers({"content-type": "application/json"}, now=0.0) is None
