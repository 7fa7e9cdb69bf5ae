"""serve's watch for a JSON client that leaves (#21): on asyncio it starts only once the
request has waited, so an answer given at once costs no watch at all."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from scheduler.serve._asyncio_watch import watch_later


def _receiver(calls: list[str]) -> Any:
    async def receive() -> dict[str, str]:
        calls.append("receive")
        return {"type": "http.disconnect"}
    return receive


@pytest.mark.real_asyncio  # the watch is asyncio's own timer and task
async def test_r21_a_request_answered_before_the_delay_is_never_watched() -> None:
    """#21: stopped before its delay, the watch never calls ``receive``; one still
    running after it sees the client leave and says so."""
    calls: list[str] = []
    left: list[str] = []
    stop = watch_later(0.05, _receiver(calls), lambda: left.append("early"))
    assert stop is not None
    stop()
    stop = watch_later(0.01, _receiver(calls), lambda: left.append("late"))
    assert stop is not None
    await anyio.sleep(0.2)
    stop()  # too late to matter: the watch already ran
    assert calls == ["receive"] and left == ["late"]


async def test_r21_off_asyncio_there_is_no_delayed_watch() -> None:
    """#21: on trio (virtual time here) the caller keeps its watch task beside the call."""
    assert watch_later(0.05, _receiver([]), lambda: None) is None
