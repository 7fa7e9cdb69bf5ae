"""The store contract suite (tests/test_store_contract.py) run against RedisStore.

Every case of the contract module is collected here again with this module's
``store`` fixture: a RedisStore on the real server at 127.0.0.1:6379 in a fresh
namespace (skipped when unreachable, failed under VIBE_REQUIRE_REDIS=1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler.store import Store
from scheduler.store._redis import RedisStore
from tests._redis_helpers import REDIS_URL
from tests.test_store_contract import (  # noqa: F401 - collected again with the Redis store
    test_cache_write_split_survives,
    test_events_filter_by_task_and_day_range,
    test_r1_1_operation_counts_and_cost_totals,
    test_r1_2_a_grouped_task_is_charged_to_its_parent_task_too,
    test_r1_2_one_event_charged_to_every_nested_scope,
    test_r2_1_record_keeps_every_token_kind,
    test_r2_1_store_refuses_negative_or_non_finite_usage,
    test_r2_6_record_is_idempotent,
    test_state_records_round_trip,
    test_totals_are_copies,
)

# RedisStore is built on redis.asyncio, which runs only on asyncio
pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.real_asyncio]


@pytest.fixture
async def store(redis_ns: str, tmp_path: Path) -> AsyncIterator[Store]:
    """RedisStore (on asyncio: the module is marked real_asyncio)."""
    s = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / "spool.jsonl")
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


def test_every_contract_case_is_collected_here() -> None:
    """Guard: a case added to the contract module must be added to the import above."""
    import tests.test_store_contract as contract

    wanted = {n for n in dir(contract) if n.startswith("test_")}
    assert wanted <= set(globals())
