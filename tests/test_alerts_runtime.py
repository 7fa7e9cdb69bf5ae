"""R3.1–R3.4: crossings applied by the alert runtime, once per crossing, in every dimension."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import structlog.testing

from scheduler.control._alerts import scope_rows
from scheduler.testing import run_virtual
from tests._alerts_helpers import Harness, make_config, open_harness, profile

LEVELS = ("warning", "critical", "exceeded")
Step = Callable[[Harness], Awaitable[None]]


async def _tokens(h: Harness) -> None:
    await h.charge("t", tokens=100)


async def _model_tokens(h: Harness) -> None:
    await h.charge("t", model="opus", tokens=100)


async def _cost(h: Harness) -> None:
    await h.charge("t", cost=0.125)


async def _file_edits(h: Harness) -> None:
    await h.charge("t", file_edits=1)


async def _shell(h: Harness) -> None:
    await h.charge("t", shell_commands=1)


async def _time(h: Harness) -> None:
    await anyio.sleep(10)
    await h.alerts.apply("t", h.tracker.time_crossings("t"))


# dimension name, task limits, one step, used after n steps
DIMENSIONS: list[tuple[str, dict[str, Any], Step, Callable[[int], float], float]] = [
    ("tokens", {"tokens": 1000}, _tokens, lambda n: 100 * n, 1000),
    ("tokens:opus", {"tokens_by_model": {"opus": 1000}}, _model_tokens, lambda n: 100 * n, 1000),
    ("cost_usd", {"cost_usd": 1.0}, _cost, lambda n: 0.125 * n, 1.0),
    ("file_edits", {"file_edits": 10}, _file_edits, lambda n: n, 10),
    ("shell_commands", {"shell_commands": 10}, _shell, lambda n: n, 10),
    ("time_s", {"time_s": 100.0}, _time, lambda n: 10 * n, 100.0),
]


@pytest.mark.parametrize(("dimension", "limits", "step", "used_after", "limit"), DIMENSIONS,
                         ids=[d[0] for d in DIMENSIONS])
async def test_r3_1_each_threshold_fires_once_per_crossing_in_every_dimension(
    dimension: str, limits: dict[str, Any], step: Step, used_after: Callable[[int], float],
    limit: float,
) -> None:
    """R3.1: warning 70 %, critical 90 %, exceeded 100 %, each exactly once per crossing."""

    h = await open_harness(tasks={"t": profile(**limits)})
    fired_at: dict[str, int] = {}
    for n in range(1, 16):
        before = len(h.events.history)
        await step(h)
        for e in list(h.events.history)[before:]:
            if e.name.startswith("budget_"):
                assert e.data["dimension"] == dimension
                assert e.name[7:] not in fired_at, f"{e.name} fired twice"
                fired_at[e.name[7:]] = n
    fired_at = fired_at
    thresholds = {"warning": 0.7, "critical": 0.9, "exceeded": 1.0}
    for level in LEVELS:
        expected = next(n for n in range(1, 16) if used_after(n) >= limit * thresholds[level])
        assert fired_at[level] == expected, (level, fired_at)


@pytest.mark.parametrize(("dimension", "limits", "step", "used_after", "limit"), DIMENSIONS,
                         ids=[d[0] for d in DIMENSIONS])
async def test_r3_2_to_r3_4_actions_in_every_dimension(
    dimension: str, limits: dict[str, Any], step: Step, used_after: Callable[[int], float],
    limit: float,
) -> None:
    """R3.2 flags cheaper routing, R3.3 aggressive + checkpoint, R3.4 pauses — per dimension."""

    h = await open_harness(tasks={"t": profile(**limits)})
    seen: set[str] = set()
    while "budget_exceeded" not in seen:
        await step(h)
        seen = set(h.names("budget_"))
        flags = h.alerts.flags("t")
        if "budget_warning" in seen:
            assert flags.prefer_cheaper
            assert flags.indicator in ("warning", "critical", "exceeded")
        if "budget_critical" in seen:
            assert flags.aggressive
            assert h.named("checkpoint_requested")
        else:
            assert not flags.aggressive
        assert h.controller.is_paused("t") == ("budget_exceeded" in seen)
    assert h.alerts.flags("t").indicator == "exceeded"
    info = h.controller.pause_info("t")
    assert info is not None and info.dimension == dimension and info.scope == "task:t"


async def test_r3_2_warning_event_and_log_message() -> None:
    h = await open_harness(tasks={"t": profile(tokens=1000)})
    with structlog.testing.capture_logs() as logs:
        for _ in range(7):
            await h.charge("t", tokens=100)
    assert any(r["event"] == "budget_alert"
               and r["message"] == "budget at 70 %, consider wrapping up" for r in logs)
    h = h
    (warning,) = h.named("budget_warning")
    assert warning.message == "budget at 70 %, consider wrapping up"
    assert warning.data["actions"] == ["log", "indicator", "prefer_cheaper"]


async def test_r3_3_critical_notification_carries_remaining_tokens_and_cost() -> None:
    h = await open_harness(tasks={"t": profile(tokens=1000, cost_usd=1.0)})
    for _ in range(9):
        await h.charge("t", tokens=100, cost=0.01)
    h = h
    (crit,) = h.named("budget_critical")
    assert crit.data["tokens_left"] == 100
    assert crit.data["cost_left"] == pytest.approx(0.91)
    assert "100 tokens and $0.91 left" in crit.message
    assert "pausing after the current step" in crit.message


async def test_r3_3_checkpoint_request_is_consumed_once() -> None:
    async def main() -> tuple[bool, bool, bool]:
        h = await open_harness(tasks={"t": profile(tokens=1000)})
        before = h.alerts.consume_checkpoint_request("t")
        await h.charge("t", tokens=950)
        return before, h.alerts.consume_checkpoint_request("t"), \
            h.alerts.consume_checkpoint_request("t")

    assert await main() == (False, True, False)


async def test_r3_1_thresholds_are_configurable() -> None:
    cfg = make_config(alerts={"warning": 0.5, "critical": 0.8, "exceeded": 0.95})
    h = await open_harness(cfg, tasks={"t": profile(tokens=100)})
    for _ in range(100):
        await h.charge("t", tokens=1)
        if h.controller.is_paused("t"):
            break
    h = h
    assert [e.data["used"] for e in h.events.history if e.name.startswith("budget_")] == [
        50, 80, 95,
    ]
    assert h.named("budget_warning")[0].message == "budget at 50 %, consider wrapping up"


async def test_r3_1_shared_session_crossing_fires_once_and_flags_every_task() -> None:
    cfg = make_config(session={"tokens": 1000})
    h = await open_harness(cfg, tasks={"a": profile(), "b": profile()})
    for i in range(8):
        await h.charge("a" if i % 2 else "b", tokens=100)
    h = h
    assert h.names("budget_") == ["budget_warning"]
    assert h.named("budget_warning")[0].data["scope"] == "session:s1"
    assert h.alerts.flags("a").prefer_cheaper and h.alerts.flags("b").prefer_cheaper


async def test_r3_1_per_model_session_cap_fires_for_that_model_only() -> None:
    cfg = make_config(session={"tokens_by_model": {"opus": 1000, "haiku": 5000}})
    h = await open_harness(cfg, tasks={"t": profile()})
    for _ in range(10):
        await h.charge("t", model="opus", tokens=100)
    h = h
    assert [(e.name, e.data["dimension"]) for e in h.events.history
            if e.name.startswith("budget_")] == [
        ("budget_warning", "tokens:opus"), ("budget_critical", "tokens:opus"),
        ("budget_exceeded", "tokens:opus"),
    ]


async def test_r3_status_rows_show_use_and_level_per_dimension() -> None:
    async def main() -> dict[str, tuple[float, str, bool]]:
        h = await open_harness(make_config(session={"tokens": 10_000}),
                               tasks={"t": profile(tokens=1000, file_edits=10, time_s=100.0)})
        await h.charge("t", tokens=950, file_edits=7)
        await anyio.sleep(20)
        await h.controller.request_pause("t", "a person asked")
        alerts, task = h.tracker.config.alerts, h.tracker.task_scope("t")
        rows = [*scope_rows(task, "t", alerts, elapsed_s=anyio.current_time() - task.started_at,
                            paused=h.controller.is_paused("t")),
                *scope_rows(h.tracker.session, "*", alerts),
                *scope_rows(h.tracker.day_scope(), "*", alerts)]
        return {f"{r.task_id} {r.dimension}": (round(r.used, 6), r.level, r.paused)
                for r in rows}

    assert await main() == {
        "t tokens": (950, "critical", True),
        "t file_edits": (7, "warning", True),
        "t time_s": (20, "ok", True),
        "* tokens": (950, "ok", False),
    }


async def test_r3_alert_statistics_count_levels() -> None:
    h = await open_harness(tasks={"t": profile(tokens=100)})
    await h.charge("t", tokens=100)
    h = h
    assert h.alerts.statistics().fired == {"warning": 1, "critical": 1, "exceeded": 1}


def test_r3_1_thresholds_passed_before_a_restart_do_not_fire_again(tmp_path: Any) -> None:
    """R3.1 across restarts: a task resumed at 75 % of its tokens (and a day at 75 % of its
    cost) does not announce the warning again; the next threshold still fires once."""
    from scheduler import Limits, TaskSpec, Usage, VibeConfig
    from scheduler.budget import resolve_task
    from scheduler.store import SqliteStore
    from tests._helpers import tracker_with_task

    config = VibeConfig.model_validate({"budgets": {"day": {"cost_usd": 1.0}}})
    spec = TaskSpec(id="t1", agent="coder", prompt="Fix it",
                    budget=Limits(tokens=1000, cost_usd=100.0))

    async def run(charge_tokens: int, cost: float) -> list[tuple[str, str, str]]:
        store = SqliteStore(tmp_path / "vibe.db")
        await store.open()
        try:
            tr = await tracker_with_task(store, config, task=spec, session="s1")
            assert resolve_task(spec, config).limits.tokens == 1000
            event = tr.make_event("t1", model="haiku", usage=Usage(charge_tokens, 0),
                                  cost_usd=cost)
            return [(c.scope.split(":")[0], c.dimension, c.level)
                    for c in await tr.charge(event)]
        finally:
            await store.aclose()

    first = run_virtual(run, 750, 0.75)
    assert ("task", "tokens", "warning") in first and ("day", "cost_usd", "warning") in first
    second = run_virtual(run, 200, 0.20)  # a new process: same store, same task
    assert ("task", "tokens", "warning") not in second
    assert ("day", "cost_usd", "warning") not in second
    assert ("task", "tokens", "critical") in second and ("day", "cost_usd", "critical") in second
