"""Shared fixtures: the anyio backend (virtual time), orchestrators, stores, global state.

Async tests run on trio's MockClock with autojump (``scheduler.testing``): time
moves only when every task is blocked, so timelines are exact and fast.  A
test that needs real I/O or asyncio itself carries ``@pytest.mark.real_asyncio``
with a comment saying why, and runs on asyncio with real time; one that needs a
given backend parametrizes ``anyio_backend``.  Sync tests that run several event
loops in turn (a restart, hypothesis examples) use ``run_virtual`` / ``run_real``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from scheduler import Orchestrator
from scheduler.store import MemoryStore, SqliteStore, Store
from scheduler.testing import build_orchestrator, virtual_backend
from tests._helpers import OrchestratorFactory


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Virtual time, unless the test is marked ``real_asyncio``."""
    if request.node.get_closest_marker("real_asyncio") is not None:
        return "asyncio", {}
    return virtual_backend()


@pytest.fixture
def make_orchestrator(tmp_path: Path) -> OrchestratorFactory:
    """Builds orchestrators with :func:`scheduler.testing.build_orchestrator`: unless a
    ``config`` is given, a memory store under ``tmp_path`` (or ``state_dir``), session
    ``s1`` and ``settings`` as config fields; the wall clock on FRIDAY; a ScriptedProvider
    unless ``provider`` is given."""

    def make(agents: Mapping[str, Callable[[], Any]], **kw: Any) -> Orchestrator:
        if kw.get("config") is None:
            kw.setdefault("state_dir", tmp_path)
        return build_orchestrator(agents, **kw)

    return make


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


@pytest.fixture
def zone() -> Iterator[None]:
    """The process's time zone (``TZ``, ``time.tzset()``) as it was, after the test."""
    before = os.environ.get("TZ")
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()
