"""Shared helpers for the allocator tests: virtual time and small configs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import trio.testing

from scheduler.config import AllocatorConfig, PoolConfig

T = TypeVar("T")


def run_virtual(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn`` on trio with a MockClock that jumps whenever every task is blocked."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(fn, *args, backend="trio", backend_options={"clock": clock})


def pool_config(
    *, concurrent: int | None = 10, tpm: int | None = None, rpm: int | None = None, **kw: Any
) -> AllocatorConfig:
    """An allocator config with one pool named ``p``."""
    pool = PoolConfig(tokens_per_minute=tpm, requests_per_minute=rpm, concurrent=concurrent)
    return AllocatorConfig(pools={"p": pool}, **kw)
