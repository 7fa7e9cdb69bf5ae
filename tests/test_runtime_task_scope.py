"""R7.1: on asyncio a task's own cancel scope keeps its task and child scopes in small
lists, and cancels, shields and nests exactly as anyio's own scope does."""

from __future__ import annotations

import anyio
import pytest

from scheduler.runtime._spawn import _MEMBER_SLOTS, _Members, task_group

pytestmark = pytest.mark.real_asyncio  # the asyncio-only scope is what is tested


def test_members_do_what_anyio_asks_of_a_set() -> None:
    m = _Members()
    m.add("a")
    m.add("a")
    m.add("b")
    assert list(m) == ["a", "b"]
    m.discard("c")
    m.remove("a")
    assert list(m) == ["b"] and m
    with pytest.raises(KeyError):
        m.remove("a")
    m.discard("b")
    assert not m


async def test_a_task_scope_cancels_nests_and_shields() -> None:
    assert _MEMBER_SLOTS  # the anyio installed keeps the layout this relies on
    events: list[str] = []
    started = anyio.Event()

    async def body(scope: anyio.CancelScope) -> None:
        with scope:
            assert type(scope).__name__ == "_TaskScope"
            try:
                with anyio.CancelScope():  # a child scope while it waits
                    started.set()
                    await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.01)  # shielded clean-up runs to its end
                    events.append("cleaned")
        events.append("after")

    async with task_group() as tg:
        task = tg.start_scoped(body)
        await started.wait()
        tg.cancel()  # type: ignore[attr-defined]
    assert events == ["cleaned", "after"] and task is not None
