"""Shared helpers for the allocator tests: small configs."""

from __future__ import annotations

from typing import Any

from scheduler.config import AllocatorConfig, PoolConfig


def pool_config(
    *, concurrent: int | None = 10, tpm: int | None = None, rpm: int | None = None, **kw: Any
) -> AllocatorConfig:
    """An allocator config with one pool named ``p``."""
    pool = PoolConfig(tokens_per_minute=tpm, requests_per_minute=rpm, concurrent=concurrent)
    return AllocatorConfig(pools={"p": pool}, **kw)
