"""R2.4, R1.2: a call that may write the prompt cache holds what that write can cost.

A call's admission holds its estimate: prompt × input price + ``max_tokens`` × output
price.  A prompt sent with ``cache_control`` is billed as a cache write, 1.25 × the
input price (5 minutes) or 2 × (an hour): processes racing for the last dollars of a
shared cost limit each held half of what their 1-hour writes cost, and together spent
past the limit.  Now such a call holds its prompt at the write's price (the marks are
noted while the prompt is counted, no walk more); a call without one holds as before.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from agents.providers import AnthropicProvider
from scheduler import BudgetExceededError, Orchestrator, TaskSpec, Usage
from scheduler.budget import TokenCounter
from scheduler.config import ProviderConfig, VibeConfig
from scheduler.core import FixedWallClock, cost_usd
from scheduler.runtime._call import Prices
from scheduler.store import open_store
from scheduler.testing import FRIDAY
from tests._anthropic_helpers import SECRET_KEY, fake_api
from tests._redis_helpers import REDIS_URL
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

__all__ = ["fake_api"]

LIMIT_USD = 0.30
DAY = f"day:{FRIDAY.isoformat()}"
_TEXTS = itertools.count()


class _Writer:
    """Calls with a new long system prompt each time, kept an hour: every call writes the
    cache at 2 × the input price.  Stops when the shared day budget refuses a call."""

    async def run(self, ctx: Any) -> None:
        while True:
            system = f"Context {next(_TEXTS)}. " + "The lease renews every third. " * 300
            try:
                await ctx.llm.complete([{"role": "user", "content": "go"}], system=system,
                                       model="sonnet", max_tokens=40,
                                       hints={"cache_ttl": "1h"})
            except BudgetExceededError:
                return


async def _race(server: FakeAnthropicServer, tmp_path: Path,
                store: Callable[[str], str]) -> float:
    """Four orchestrators, two writers each, on one store: the day's recorded cost."""
    orchs = []
    for name in ("a", "b", "c", "d"):
        config = VibeConfig(
            state_dir=tmp_path / name, store=store(name), session_id=name,
            budgets={"session": {}, "day": {"cost_usd": LIMIT_USD},
                     "weekend_day_cost_usd": None},
            provider=ProviderConfig(kind="anthropic", base_url=server.base_url))
        orchs.append(Orchestrator(
            config, provider=AnthropicProvider(config.provider, api_key=SECRET_KEY),
            agents={"w": _Writer}, wall=FixedWallClock(FRIDAY), counter=TokenCounter()))
    async with anyio.create_task_group() as tg:
        for orch in orchs:
            tg.start_soon(orch.run, [TaskSpec(id=f"w{i}", agent="w", prompt="x",
                                              on_limit="reject") for i in range(2)])
    reader = open_store(orchs[0].config.store, tmp_path / "reader")
    await reader.open()
    try:
        return (await reader.totals(DAY)).cost_usd
    finally:
        await reader.aclose()


def _check(server: FakeAnthropicServer, spent: float) -> None:
    written = sum(r.cache_creation_1h for r in server.state.reported)
    assert written > 0  # the calls did write the cache, an hour each
    # nearly all of it spent, never more (before: ~10 % over, each call held half its cost)
    assert LIMIT_USD * 0.85 < spent <= LIMIT_USD, spent


@pytest.mark.real_asyncio
async def test_r2_4_r1_2_four_orchestrators_on_one_sqlite_file_stay_within_the_day_cost(
        fake_api: FakeAnthropicServer, tmp_path: Path) -> None:
    """R2.4, R1.2: 4 orchestrators on one SQLite file race for a $0.30 day with calls
    that write the cache for an hour: the day's cost stays within it."""
    db = tmp_path / "shared.db"  # new: the four create it together (R1.5)
    _check(fake_api, await _race(fake_api, tmp_path, lambda _: f"sqlite:///{db}"))


@pytest.mark.real_asyncio
async def test_r2_4_r1_2_four_orchestrators_on_redis_stay_within_the_day_cost(
        fake_api: FakeAnthropicServer, tmp_path: Path, redis_ns: str) -> None:
    """R2.4, R1.2: as on SQLite, with the orchestrators on one Redis namespace."""
    _check(fake_api, await _race(fake_api, tmp_path,
                                 lambda _: f"{REDIS_URL}?namespace={redis_ns}"))


def test_r2_4_a_hold_prices_the_prompt_as_the_longest_cache_write_it_may_make() -> None:
    """R2.4: the cost held for a prompt: plain without a mark, 1.25 × the input price
    with a 5-minute mark (messages, tools), 2 × with an hour's -- as ``cost_usd`` bills
    a prompt written whole."""
    from scheduler.runtime._call import Prices

    config = VibeConfig()
    spec = config.model_spec("sonnet")
    counter, prices = TokenCounter(), Prices()
    text = {"type": "text", "text": "Long shared context."}
    five = {**text, "cache_control": {"type": "ephemeral"}}
    hour = {**text, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    tool = {"name": "t", "input_schema": {}, "cache_control": {"type": "ephemeral"}}
    cases = [([text], (), Usage(1000, 50)), ([five], (), Usage(0, 50, 0, 1000)),
             ([text], [tool], Usage(0, 50, 0, 1000)),
             ([five, hour], [tool], Usage(0, 50, 0, 0, 1000))]
    for content, tools, billed in cases:
        counter.count_prompt([{"role": "user", "content": content}], tools=tools)
        held = prices.cost(config, "sonnet", 1000, 50, counter.cache_writes)
        assert held == pytest.approx(cost_usd(billed, spec)), (content, tools)


@pytest.mark.real_asyncio  # real sockets: the SDK, serve and the fake API
async def test_r2_4_serve_holds_a_forwarded_hour_cache_write_at_its_price(
        fake_api: FakeAnthropicServer, tmp_path: Path) -> None:
    """R2.4 through ``vibe-engine serve``: a client's system block marked to be cached an
    hour is held at 2 × the input price, so a call whose write the key's budget cannot
    pay is refused, never forwarded (before: held at the plain price, it was forwarded
    and the key spent past its budget)."""
    text = "The lease renews every third. " * 300
    user = [{"role": "user", "content": "Explain the retry loop."}]
    raw = TokenCounter().count_prompt(user, system=text)
    spec = VibeConfig().model_spec("haiku")
    price_in, price_out = spec.input_usd_per_mtok / 1e6, spec.output_usd_per_mtok / 1e6
    # above the plain hold (an uncalibrated prompt holds 1.5 × its count), below the
    # write's (the fake API counts 1.2 × it, written at 2 ×)
    limit = round(2.0 * raw * price_in + 16 * price_out, 6)
    data = serve_config(tmp_path, fake_api.base_url, [
        {"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "reject",
         "budget": {"cost_usd": limit}}])
    async with serving(data) as run, AsyncExitStack() as stack:
        client = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        with pytest.raises(anthropic.BadRequestError, match="cost_usd"):
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=16, messages=user,  # type: ignore[arg-type]
                system=[{"type": "text", "text": text,
                         "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
    assert fake_api.requests == 0


def test_r2_1_a_charges_cost_from_prices_read_once_is_cost_usd_to_the_bit() -> None:
    """R2.1: the gateway prices a settled call from the prices it read once
    (``Prices.actual``): the very float ``cost_usd`` gives, for every kind of token."""
    config = VibeConfig()
    prices = Prices()
    rng = random.Random(7)
    for _ in range(2_000):
        model = rng.choice(["haiku", "sonnet", "opus"])
        usage = Usage(*(rng.choice([0, 1, 7, rng.randrange(10**7)]) for _ in range(5)))
        assert prices.actual(config, model, usage) == cost_usd(usage, config.model_spec(model))
