"""Shared fixtures: anyio backend, stores, global-state hygiene."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from scheduler.store import MemoryStore, SqliteStore, Store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog globally; give every test the defaults back."""
    yield
    structlog.reset_defaults()


def redis_required() -> bool:
    """CI sets VIBE_REQUIRE_REDIS=1: a missing Redis is then a failure, not a skip."""
    return os.environ.get("VIBE_REQUIRE_REDIS") == "1"


STORE_KINDS = ["memory", "sqlite"]


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Every store backend the contract suite runs against."""
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "vibe.db")
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture
def redis_ns() -> Iterator[str]:
    """A fresh namespace on the test Redis, deleted afterwards (skips or fails without Redis)."""
    from tests._redis_helpers import delete_namespace, new_namespace, redis_or_skip

    client = redis_or_skip()
    ns = new_namespace()
    try:
        yield ns
    finally:
        delete_namespace(client, ns)
        client.close()
