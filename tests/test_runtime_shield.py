"""R2.1: the shield a settled call's usage is recorded under (``shield()``) holds as
``anyio.CancelScope(shield=True)`` does -- on asyncio, where it is made without anyio's
backend look-up, inside a task's own scope, and on trio (virtual time)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from scheduler.runtime._spawn import shield, task_group


async def _cancelled_while_shielded(events: list[str]) -> None:
    started = anyio.Event()

    async def body(scope: anyio.CancelScope) -> None:
        with scope:
            with shield() as shielded:
                assert shielded.shield
                started.set()
                await anyio.sleep(0.01)  # the cancellation waits for the shield's end
                events.append("settled")
            events.append("not reached")  # cancelled at the next await after it
            await anyio.sleep(1)
            events.append("not reached either")
        events.append("after")

    async with task_group() as tg:
        tg.start_scoped(body)
        await started.wait()
        tg.cancel()  # type: ignore[attr-defined]


@pytest.mark.real_asyncio  # the asyncio scope made directly is what is tested
async def test_shield_holds_inside_a_task_scope_on_asyncio() -> None:
    assert type(shield()).__module__ == "anyio._backends._asyncio"  # made directly
    events: list[str] = []
    await _cancelled_while_shielded(events)
    assert events == ["settled", "not reached", "after"]


async def test_shield_holds_on_the_virtual_backend() -> None:
    events: list[str] = []
    with anyio.CancelScope() as outer:
        with shield():
            outer.cancel()
            await anyio.sleep(5)  # virtual time: shielded, so it sleeps to its end
            events.append("settled")
        await anyio.lowlevel.checkpoint()
        events.append("not reached")
    assert events == ["settled"] and outer.cancelled_caught
