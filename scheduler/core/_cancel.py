"""Cancel scopes on the hot path.

``anyio.CancelScope(...)`` asks sniffio which library runs each time it is made; a
governed call makes a few.  On asyncio these are made as anyio's asyncio backend makes
them (the same class), elsewhere (trio on virtual time in tests) through anyio.
"""

from __future__ import annotations

import asyncio

import anyio

try:  # anyio's asyncio scope is private: another anyio layout gets anyio's own scopes
    from anyio._backends._asyncio import CancelScope as AsyncioCancelScope
except ImportError:  # pragma: no cover - depends on the installed anyio
    AsyncioCancelScope = anyio.CancelScope  # type: ignore[misc,assignment]

__all__ = ["AsyncioCancelScope", "shield", "until"]


def shield() -> anyio.CancelScope:
    """``anyio.CancelScope(shield=True)``, without anyio's look-up of the running backend
    on asyncio (every settled model call enters one)."""
    if asyncio._get_running_loop() is not None:
        return AsyncioCancelScope(shield=True)
    return anyio.CancelScope(shield=True)


def until(deadline: float) -> anyio.CancelScope:
    """``anyio.CancelScope(deadline=deadline)``, made as :func:`shield` is."""
    if asyncio._get_running_loop() is not None:
        return AsyncioCancelScope(deadline=deadline)
    return anyio.CancelScope(deadline=deadline)
