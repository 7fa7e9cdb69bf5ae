"""R2.1: the shield a settled call's usage is recorded under (``shield()``) holds as
``anyio.CancelScope(shield=True)`` does -- on asyncio, where it is made without anyio's
backend look-up, inside a task's own scope, and on trio (virtual time)."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from scheduler.core import shield
from scheduler.runtime._spawn import task_group


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


@pytest.mark.real_asyncio
async def test_r2_1_the_shield_leaves_the_task_scope_as_anyio_does() -> None:
    """R2.1: an exception leaving the shield, and a timeout inside it, leave the task's
    own scope in charge: cancelling it afterwards still ends the task at its next await."""
    events: list[str] = []
    started = anyio.Event()

    async def body(scope: anyio.CancelScope) -> None:
        with scope:
            with pytest.raises(ValueError), shield():
                raise ValueError("left through the shield")
            with shield():
                with anyio.move_on_after(0.001) as inner:  # a scope inside the shield
                    await anyio.sleep(1)
                events.append(f"moved on {inner.cancelled_caught}")
            started.set()
            await anyio.sleep(1)
            events.append("not reached")
        events.append(f"cancelled {scope.cancelled_caught}")

    async with task_group() as tg:
        tg.start_scoped(body)
        await started.wait()
        tg.cancel()  # type: ignore[attr-defined]
    assert events == ["moved on True", "cancelled True"]


@pytest.mark.real_asyncio
async def test_r2_1_the_shield_in_a_task_anyio_never_saw() -> None:
    """R2.1: a plain asyncio task (no anyio state yet) gets anyio's own steps."""

    async def plain() -> str:
        with shield() as shielded:
            await anyio.lowlevel.checkpoint()
        return "settled" if shielded.shield and not shielded.cancel_called else "?"

    assert await asyncio.get_running_loop().create_task(plain()) == "settled"


@pytest.mark.real_asyncio
async def test_r2_1_the_shield_holds_a_cancel_made_before_it_until_its_end() -> None:
    """R2.1: the task's scope cancelled before the shield is entered: the shielded block
    runs to its end, the cancellation reaches the task after it."""
    events: list[str] = []
    with anyio.CancelScope() as outer:
        outer.cancel()
        with shield():
            await anyio.sleep(0.001)
            events.append("settled")
        events.append("then")
        await anyio.sleep(1)
        events.append("not reached")
    assert events == ["settled", "then"] and outer.cancelled_caught
