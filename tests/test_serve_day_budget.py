"""A client key's budget per calendar day (``[serve.keys.day_budget]``, #21): what the key
spends today, grouped tasks included, against limits that start from nothing at
midnight; on the key's own shared scope, so replicas on one store share it (R1.2, R1.5)."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler.cli._status import gather_status
from scheduler.core import FixedWallClock
from scheduler.store import task_day_scope
from tests._anthropic_helpers import fake_api
from tests._redis_helpers import REDIS_URL
from tests._serve_helpers import BIN, CLIENT_KEYS, Running, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

KEY = CLIENT_KEYS["VIBE_KEY_A"]
USER = [{"role": "user", "content": "Explain the retry loop in two lines."}]
DAY_1 = datetime(2026, 12, 2, 23, 50, tzinfo=UTC)
DAY_2 = DAY_1 + timedelta(minutes=20)


def _key(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "reject",
             "day_budget": {"tokens": 600}, **extra}]


async def _client(stack: AsyncExitStack, url: str) -> anthropic.AsyncAnthropic:
    return await stack.enter_async_context(
        anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=2))


async def _ask(client: anthropic.AsyncAnthropic, max_tokens: int, **kw: Any) -> int:
    msg = await client.messages.create(model="claude-haiku-4-5", max_tokens=max_tokens,
                                       messages=USER, **kw)  # type: ignore[arg-type]
    return msg.usage.input_tokens + msg.usage.output_tokens


def _day_totals(run: Running, day: datetime) -> int:
    scope = run.served.orchestrator.tracker.scope_named(
        "alpha", task_day_scope("alpha", day.date().isoformat()))
    assert scope is not None
    return scope.totals.tokens


@pytest.mark.real_asyncio  # real sockets: the SDK, serve and the fake API
async def test_r1_5_key_day_budget_refuses_today_and_starts_over_at_midnight(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R1.1/R1.5 through serve: a call that would cross the key's day budget is refused
    with the day budget named (not retried); after midnight the key spends again, its
    lifetime totals keep both days and the refused call reached no upstream."""
    wall = FixedWallClock(DAY_1)
    data = serve_config(tmp_path, fake_api.base_url, _key())
    async with serving(data, wall) as run, AsyncExitStack() as stack:
        client = await _client(stack, run.url)
        first = await _ask(client, 64)
        with pytest.raises(anthropic.BadRequestError) as refused:
            await _ask(client, 1000)
        message = str(refused.value)
        assert f"{task_day_scope('alpha', '2026-12-02')} tokens" in message
        assert "day_budget.tokens" in message
        assert fake_api.requests == 1
        assert _day_totals(run, DAY_1) == first

        wall.at = DAY_2  # midnight passed: a new day's budget
        second = await _ask(client, 300)
        assert fake_api.requests == 2
        assert _day_totals(run, DAY_2) == second
        assert _day_totals(run, DAY_1) == first
        assert run.totals("alpha").tokens == first + second
        store = run.served.orchestrator.store
        assert (await store.totals(task_day_scope("alpha", "2026-12-03"))).tokens == second
    # ``vibe-engine status``'s rows (the key's usage.json, written at exit) show its day
    doc = await gather_status(tmp_path / "state", "sqlite", today=DAY_2.date())
    rows = [r for r in doc["task_budgets"] if r["scope"].startswith("task-day:")]
    assert [(r["task_id"], r["scope"], r["dimension"], r["used"], r["limit"]) for r in rows] == [
        ("alpha", task_day_scope("alpha", "2026-12-03"), "tokens", second, 600)]


@pytest.mark.real_asyncio
async def test_r1_2_grouped_tasks_count_toward_their_keys_day(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R1.2: calls grouped into ``alpha/NAME`` (``x-vibe-task``) spend the key's day
    budget too: the key's day is refused for a grouped call once the key's own calls and
    the grouped ones fill it."""
    data = serve_config(tmp_path, fake_api.base_url, _key())
    async with serving(data, FixedWallClock(DAY_1)) as run, AsyncExitStack() as stack:
        client = await _client(stack, run.url)
        grouped = await _ask(client, 64, extra_headers={"x-vibe-task": "docs"})
        own = await _ask(client, 64)
        assert _day_totals(run, DAY_1) == grouped + own
        with pytest.raises(anthropic.BadRequestError, match="task-day:alpha:2026-12-02"):
            await _ask(client, 1000, extra_headers={"x-vibe-task": "docs"})


@pytest.mark.real_asyncio
async def test_r1_2_hold_at_the_day_budget_then_decide_add_for_today(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R3.4: a ``hold`` key at its day budget is paused on that day's scope; ``decide
    alpha add`` raises today's limit (not the key's lifetime budget) and the held call
    completes."""
    data = serve_config(tmp_path, fake_api.base_url, _key(on_limit="hold"))
    async with serving(data, FixedWallClock(DAY_1)) as run, AsyncExitStack() as stack:
        client = await _client(stack, run.url)
        await _ask(client, 64)
        done: list[int] = []

        async def held() -> None:
            done.append(await _ask(client, 1000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(held)
            controller = run.served.orchestrator.controller
            with anyio.fail_after(10):
                while not controller.is_paused("alpha"):  # noqa: ASYNC110 - no event to wait on
                    await anyio.sleep(0.02)
            await controller.decide("alpha", "add_budget", tokens=5000)
        assert done and fake_api.requests == 2
        tracker = run.served.orchestrator.tracker
        day = tracker.scope_named("alpha", task_day_scope("alpha", "2026-12-02"))
        assert day is not None and day.limits.tokens == 5600
        assert tracker.task_scope("alpha").limits.tokens is None  # the lifetime: unchanged


@pytest.mark.real_asyncio
@pytest.mark.usefixtures("redis_ns")
async def test_r1_2_replicas_on_redis_share_the_key_day(
    fake_api: FakeAnthropicServer, tmp_path: Path, redis_ns: str
) -> None:
    """R1.2 across processes' stores: two serve runs on one Redis (their own sessions)
    hold and charge the key's day atomically; the second sees the first's spend and
    refuses what would cross the day budget."""
    store = f"{REDIS_URL}?namespace={redis_ns}"
    runs = []
    async with AsyncExitStack() as stack:
        for name in ("a", "b"):
            data = {**serve_config(tmp_path / name, fake_api.base_url, _key()),
                    "store": store, "session_id": f"replica-{name}"}
            runs.append(await stack.enter_async_context(serving(data, FixedWallClock(DAY_1))))
        a, b = [await _client(stack, r.url) for r in runs]
        spent = await _ask(a, 200)
        # what fits the day alone (prompt + max_tokens under 600) but not after a's spend
        with pytest.raises(anthropic.BadRequestError, match="task-day:alpha"):
            await _ask(b, 600 - spent // 2 - 20)
        shared = runs[1].served.orchestrator.store
        assert (await shared.totals(task_day_scope("alpha", "2026-12-02"))).tokens == spent
        assert fake_api.requests == 1


@pytest.mark.real_asyncio
async def test_r1_5_a_restarted_serve_continues_the_key_day(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R1.5: serve restarted the same day (a new session on the same SQLite file) starts
    the key's day from what the earlier run spent, and refuses what would cross it."""
    data = serve_config(tmp_path, fake_api.base_url, _key())
    async with serving(data, FixedWallClock(DAY_1)) as run, AsyncExitStack() as stack:
        spent = await _ask(await _client(stack, run.url), 200)
    again = {**data, "session_id": "serve-test-2"}
    async with serving(again, FixedWallClock(DAY_1)) as run, AsyncExitStack() as stack:
        assert _day_totals(run, DAY_1) == spent
        with pytest.raises(anthropic.BadRequestError, match="task-day:alpha:2026-12-02"):
            await _ask(await _client(stack, run.url), 600 - spent // 2 - 20)
    assert fake_api.requests == 1


@pytest.mark.real_asyncio
async def test_r1_5_status_shows_a_restarted_keys_whole_budget_and_its_day(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R1.5 / R3.1: after serve restarted, ``vibe-engine status`` shows the key's budget row
    as used by both runs (a key's budget counts every session's use) and labels its
    day_budget's row with the day, so it cannot be read as the key's own ``tokens``."""
    data = serve_config(tmp_path, fake_api.base_url, _key(budget={"tokens": 100000}))
    async with serving(data, FixedWallClock(DAY_1)) as run, AsyncExitStack() as stack:
        first = await _ask(await _client(stack, run.url), 64)
    again = {**data, "session_id": "serve-test-2"}
    async with serving(again, FixedWallClock(DAY_1)) as run, AsyncExitStack() as stack:
        second = await _ask(await _client(stack, run.url), 64)
    done = await anyio.run_process([str(BIN), "status", "--state-dir", str(tmp_path / "state")],
                                   env={**os.environ, "COLUMNS": "200"})
    cells = [[cell.strip() for cell in line.strip("│").split("│")]
             for line in done.stdout.decode().splitlines() if line.startswith("│ alpha ")]
    rows = [tuple(row[:3]) for row in cells if len(row) == 6]  # Task budgets' rows
    assert rows == [("alpha", "tokens", f"{first + second:,}"),
                    ("alpha", "tokens (day 2026-12-02)", f"{first + second:,}")]
