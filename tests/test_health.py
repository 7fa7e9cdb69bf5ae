"""Model health: monitoring, outages, 60 s checks, gradual restoration (SPEC R6.3–R6.6).

Time-dependent tests run on trio's MockClock, so a 60 s health interval takes
no real time.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from scheduler import VibeConfig
from scheduler.core import EventBus, OverloadedError, ProviderTimeoutError, RateLimitedError
from scheduler.routing import HealthMonitor
from scheduler.routing._health import error_kind_of
from tests._routing_helpers import ManualClock, Recorder, knock_out

HEALTHY_LATENCY = 0.3


def monitor(clock: Any = None, ping: Any = None) -> tuple[HealthMonitor, Recorder]:
    clk = clock or anyio.current_time
    bus = EventBus(clk)
    return HealthMonitor(VibeConfig(), bus, clock=clk, ping=ping), Recorder(bus)


class Pinger:
    """A ping that takes ``latency`` seconds of (virtual) time, or fails while ``down``."""

    def __init__(self, latency: float = HEALTHY_LATENCY) -> None:
        self.latency = latency
        self.down: set[str] = set()
        self.calls: list[tuple[float, str]] = []

    async def __call__(self, model: str) -> str:
        self.calls.append((anyio.current_time(), model))
        await anyio.sleep(self.latency)
        if model in self.down:
            raise OverloadedError(model, "overloaded_error", status=529)
        return "pong"


# -- R6.3 monitoring -------------------------------------------------------------------


def test_r6_3_a_long_run_keeps_the_calls_of_the_last_interval_in_order() -> None:
    """R6.3: over many calls the statistics read the latest ``window`` calls and the error
    rate the calls of the last ``interval_s`` (60 s), the older ones dropped in order."""
    clock = ManualClock()
    h, _ = monitor(clock)
    for i in range(1000):
        clock.now = float(i)
        h.record_call("sonnet", i % 4 != 0, i / 100, None if i % 4 else "error")
    s = h.statistics().models["sonnet"]
    assert (s.calls, s.errors) == (1000, 250)
    assert s.success_rate == pytest.approx(15 / 20)  # calls 980-999: 5 failed
    assert s.mean_latency_s == pytest.approx(sum(range(980, 1000)) / 100 / 20)
    assert h.recent_error_rate("sonnet") == pytest.approx(15 / 61)  # t >= 939: 61 calls


def test_r6_3_per_model_success_retry_latency_error_satisfaction() -> None:
    """R6.3: success rate, retry rate, latency, error rate and satisfaction per model."""
    h, _ = monitor(ManualClock())
    h.record_call("sonnet", True, 1.0)
    h.record_call("sonnet", True, 2.0, retries=1)
    h.record_call("sonnet", False, 3.0, "error")
    h.record_call("sonnet", True, 2.0)
    h.record_satisfaction("sonnet", 0.8)
    h.record_satisfaction("sonnet", 0.4)
    s = h.statistics().models["sonnet"]
    assert (s.calls, s.errors, s.retries) == (4, 1, 1)
    assert s.success_rate == pytest.approx(0.75) and s.error_rate == pytest.approx(0.25)
    assert s.retry_rate == pytest.approx(0.25)
    assert s.mean_latency_s == pytest.approx(2.0)
    assert s.satisfaction == pytest.approx(0.6)
    assert h.statistics().models["haiku"].calls == 0


def test_r6_3_rates_over_the_recent_window() -> None:
    """R6.3: success and error rates follow the last ``window`` calls."""
    clock = ManualClock()
    h, _ = monitor(clock)
    for _ in range(40):
        h.record_call("haiku", False, 0.1, "error")
    for _ in range(20):
        clock.now += 10  # older entries age out of the 60 s horizon
        h.record_call("haiku", True, 0.1)
    s = h.statistics().models["haiku"]
    assert s.success_rate == 1.0 and s.calls == 60


def test_error_kinds() -> None:
    assert error_kind_of(RateLimitedError("opus", "x")) == "rate_limited"
    assert error_kind_of(OverloadedError("opus", "x")) == "overloaded"
    assert error_kind_of(ProviderTimeoutError("opus", "x")) == "timeout"
    assert error_kind_of(ValueError()) == "error"


# -- R6.6 outages and notices ----------------------------------------------------------


def test_r6_6_consecutive_overloads_mark_unavailable_with_one_notice() -> None:
    """R6.6: 529s in a row → unavailable; 'X temporarily unavailable, switched to Y …' once."""
    h, rec = monitor(ManualClock())
    h.record_call("opus", False, 1.0, "overloaded")
    h.record_call("opus", False, 1.0, "overloaded")
    assert h.state("opus") == "available"
    h.record_call("opus", False, 1.0, "timeout")
    assert h.state("opus") == "unavailable"
    for _ in range(5):
        h.record_call("opus", False, 1.0, "overloaded")
    notices = rec.named("model_unavailable")
    assert len(notices) == 1
    assert notices[0].message == (
        "opus temporarily unavailable, switched to sonnet, capability may be limited")
    assert "opus" not in h.usable(3) and "opus" not in h.usable(1)


def test_r6_6_a_success_resets_the_error_streak() -> None:
    """R6.6: scattered errors are not an outage."""
    h, rec = monitor(ManualClock())
    for _ in range(4):
        h.record_call("opus", False, 1.0, "overloaded")
        h.record_call("opus", False, 1.0, "overloaded")
        h.record_call("opus", True, 1.0)
    assert h.state("opus") == "available" and rec.events == []


def test_r6_6_rate_limit_storm() -> None:
    """R6.6: a 429 storm (5 within 10 s) marks the model unavailable; spread-out 429s do not."""
    clock = ManualClock()
    h, rec = monitor(clock)
    for _ in range(5):
        clock.now += 5.0
        h.record_call("sonnet", False, 0.1, "rate_limited")
        h.record_call("sonnet", True, 0.1)
    assert h.state("sonnet") == "available"
    for _ in range(5):
        clock.now += 1.0
        h.record_call("sonnet", False, 0.1, "rate_limited")
        h.record_call("sonnet", True, 0.1)
    assert h.state("sonnet") == "unavailable"
    assert rec.named("model_unavailable")[0].data["reason"] == "429 storm"


def test_r6_6_notice_when_nothing_else_is_available() -> None:
    """R6.6: the degradation notice says when no other model is left."""
    h, rec = monitor(ManualClock())
    knock_out(h, "sonnet")
    knock_out(h, "opus")
    knock_out(h, "haiku")
    assert rec.named("model_unavailable")[-1].message == (
        "haiku temporarily unavailable, no other model available")


# -- R6.4 checks every 60 s ------------------------------------------------------------


@pytest.mark.anyio
async def test_r6_4_health_check_every_60s_pings_unavailable_models() -> None:
    """R6.4: the loop runs every 60 s and pings only models that are not available."""
    ping = Pinger()
    ping.down.add("opus")
    h, _ = monitor(ping=ping)
    knock_out(h, "opus")
    t0 = anyio.current_time()
    with anyio.move_on_after(185):
        await h.run()
    times = [round(t - t0, 3) for t, _ in ping.calls]
    assert times == [60.0, 120.0 + HEALTHY_LATENCY, 180.0 + 2 * HEALTHY_LATENCY]
    assert {m for _, m in ping.calls} == {"opus"}
    assert h.state("opus") == "unavailable"
    assert h.statistics().checks == 3


@pytest.mark.anyio
async def test_r6_4_passing_check_needs_latency_under_2s() -> None:
    """R6.4: a ping slower than 2 s fails the check; under 2 s passes."""
    slow = Pinger(latency=2.5)
    h, rec = monitor(ping=slow)
    knock_out(h, "opus")
    await anyio.sleep(61)  # the outage errors age out of the recent window
    assert await h.check_once() == {"opus": False}
    slow.latency = 1.9
    await anyio.sleep(61)
    assert await h.check_once() == {"opus": True}
    assert h.state("opus") == "recovering"
    assert len(rec.named("model_recovering")) == 1


@pytest.mark.anyio
async def test_r6_4_passing_check_needs_recent_error_rate_under_10pct() -> None:
    """R6.4: errors in the last interval keep the model down even when the ping answers."""
    h, _ = monitor(ping=Pinger())
    knock_out(h, "opus")
    assert await h.check_once() == {"opus": False}  # 3 errors + 1 ping in the last 60 s
    await anyio.sleep(60)
    assert await h.check_once() == {"opus": True}  # only pings left in the window


@pytest.mark.anyio
async def test_r6_4_failed_ping_keeps_model_down() -> None:
    """R6.4: a ping that errors is a failed check."""
    ping = Pinger()
    ping.down.add("opus")
    h, _ = monitor(ping=ping)
    knock_out(h, "opus")
    await anyio.sleep(120)
    assert await h.check_once() == {"opus": False}
    assert h.state("opus") == "unavailable"


# -- R6.5 gradual restoration ----------------------------------------------------------


@pytest.mark.anyio
async def test_r6_5_recovering_model_serves_low_priority_first() -> None:
    """R6.5: a recovered model serves only low-priority (background) tasks at first."""
    h, _ = monitor(ping=Pinger())
    knock_out(h, "opus")
    await anyio.sleep(60)
    await h.check_once()
    assert h.state("opus") == "recovering"
    assert "opus" in h.usable(1)
    assert "opus" not in h.usable(2) and "opus" not in h.usable(3)


@pytest.mark.anyio
async def test_r6_5_three_consecutive_successes_restore_with_one_notice() -> None:
    """R6.5: after 3 consecutive successes normal routing returns, notified once."""
    h, rec = monitor(ping=Pinger())
    knock_out(h, "opus")
    await anyio.sleep(60)
    await h.check_once()
    h.record_call("opus", True, 1.0)
    h.record_call("opus", True, 1.0)
    assert h.state("opus") == "recovering"
    h.record_call("opus", True, 1.0)
    assert h.state("opus") == "available" and "opus" in h.usable(3)
    h.record_call("opus", True, 1.0)
    restored = rec.named("model_restored")
    assert [e.message for e in restored] == ["model opus is back, best configuration restored"]
    assert rec.names() == ["model_unavailable", "model_recovering", "model_restored"]


@pytest.mark.anyio
async def test_r6_5_failure_while_recovering_goes_back_down() -> None:
    """R6.5: a failure during probation makes the model unavailable again (new notice)."""
    h, rec = monitor(ping=Pinger())
    knock_out(h, "opus")
    await anyio.sleep(60)
    await h.check_once()
    h.record_call("opus", True, 1.0)
    h.record_call("opus", True, 1.0)
    h.record_call("opus", False, 1.0, "overloaded")
    assert h.state("opus") == "unavailable"
    assert rec.names() == ["model_unavailable", "model_recovering", "model_unavailable"]
    await anyio.sleep(61)
    await h.check_once()
    h.record_call("opus", True, 1.0)
    h.record_call("opus", True, 1.0)
    assert h.state("opus") == "recovering"  # the streak started again from zero


@pytest.mark.anyio
async def test_r6_5_passing_pings_also_restore_without_traffic() -> None:
    """R6.5: with no low-priority traffic, passing 60 s checks count as successes too."""
    h, rec = monitor(ping=Pinger())
    knock_out(h, "opus")
    with anyio.move_on_after(60 * 5 + 5):
        await h.run()
    # t=60 fails (outage errors in window), t=120 recovers, 180/240/300 → 3 successes
    assert h.state("opus") == "available"
    assert rec.names() == ["model_unavailable", "model_recovering", "model_restored"]


@pytest.mark.anyio
async def test_r6_5_wait_usable_wakes_on_restoration() -> None:
    """R6.5/R6.7: a waiter for opus at normal priority wakes when opus is fully back."""
    h, _ = monitor(ping=Pinger())
    knock_out(h, "opus")
    woke: list[float] = []

    async def waiter() -> None:
        await h.wait_usable("opus", 2)
        woke.append(anyio.current_time())

    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(120)
        await h.check_once()  # recovering: not yet for priority 2
        await anyio.sleep(1)
        assert woke == []
        for _ in range(3):
            h.record_call("opus", True, 0.5)
    assert len(woke) == 1 and woke[0] - t0 == pytest.approx(121 + HEALTHY_LATENCY)
