"""One provider used from one event loop after another (R7.1: one anyio loop per run; a
script or a test may run several in turn with the same provider).

A keep-alive connection belongs to the event loop that opened it: after that loop is
gone, the transport must not hand it to a request made on another loop.
"""

from __future__ import annotations

from typing import cast

import pytest

from agents.fake_api import FakeAnthropicServer
from agents.providers import AnthropicProvider
from scheduler import Completion
from scheduler.net import Conn, IdlePool
from scheduler.testing import run_real
from tests._anthropic_helpers import fake_api, provider_for, request

__all__ = ["fake_api"]  # the fixture, imported for pytest


def _complete(provider: AnthropicProvider, model: str) -> Completion:
    async def main() -> Completion:
        return await provider.complete(request(model=model))

    return run_real(main)  # a new event loop each time


@pytest.mark.parametrize("model", ["sonnet", "haiku"])
def test_r7_1_one_provider_serves_two_event_loops_in_turn(
    fake_api: FakeAnthropicServer, model: str
) -> None:
    """R7.1: a provider whose first loop left an idle keep-alive connection answers on a
    second loop (a new connection there), and on a third; the fake API saw every call
    once (none failed and was retried), and each loop closed its idle connection as it
    ended (an unclosed transport's ResourceWarning fails the test)."""
    provider = provider_for(fake_api)
    answers = [_complete(provider, model) for _ in range(3)]
    assert all(a.text for a in answers)
    assert fake_api.requests == 3


class _Conn:
    """An idle connection as the pool sees it, recording its close."""

    def __init__(self, closed: list[object]) -> None:
        self.idle_since, self._closed = 0.0, closed

    def readable(self) -> bool:
        return False

    async def close(self) -> None:
        self._closed.append(self)


def test_r7_1_a_pool_keeps_its_loops_connections_and_closes_them_as_the_loop_ends() -> None:
    """R7.1: a connection put back (even before any was taken) serves the next request
    of its loop; when the loop ends it is closed, so the next loop opens its own."""
    pool: IdlePool[str] = IdlePool(4)
    closed: list[object] = []
    conn = cast(Conn, _Conn(closed))

    async def first() -> None:
        await pool.put("origin", conn)
        assert await pool.take("origin") is conn
        await pool.put("origin", conn)

    async def second() -> Conn | None:
        return await pool.take("origin")

    run_real(first)
    assert closed == [conn]
    assert run_real(second) is None
