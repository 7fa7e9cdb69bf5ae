"""The day a governed call counts toward, read without a frame per question (R1.2): the
tracker keeps the local date while the wall clock reads inside that day's bounds, yet sees
midnight, a clock set back and a day another process began at once; the loop clock read
on asyncio is the running loop's own."""

from __future__ import annotations

import asyncio
from datetime import date, datetime

import pytest

from scheduler import TaskSpec, VibeConfig
from scheduler.budget import Tracker, resolve_task
from scheduler.core import SystemWallClock, loop_time
from scheduler.store import MemoryStore
from scheduler.store._base import DAY_BEGUN

pytestmark = pytest.mark.anyio


def _at(*parts: int) -> float:
    return datetime(*parts).timestamp()  # type: ignore[arg-type]  # local time


async def test_r1_2_the_kept_day_follows_midnight_and_never_goes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R1.2: with the machine's wall clock, the day of a task's scopes, of a reservation
    and of an event is the local date, kept within its day: a microsecond after midnight
    is the new day, a clock set back does not reopen the day before, and a later day
    another process began is today at once."""
    import scheduler.budget._scopes as scopes_module
    import scheduler.core._clock as clock_module

    at = [_at(2026, 11, 27, 12, 0)]
    monkeypatch.setattr(clock_module, "_epoch", lambda: at[0])
    monkeypatch.setattr(scopes_module, "wall_seconds", lambda: at[0])
    config = VibeConfig.model_validate({"session_id": "s1"})
    store = MemoryStore()
    tr = Tracker(store, config, session_id="s1", wall=SystemWallClock())
    await tr.open()
    await tr.start_task("t1", resolve_task(TaskSpec(id="t1", agent="a", prompt="x"), config))

    def days() -> tuple[date, str, str, str | None]:
        held = tr.reserve_now("t1", model="sonnet", tokens=10, cost_usd=0.0,
                              prompt_tokens=5, completion_tokens=5)
        if held is not None:
            tr.cancel(held)
        return (tr.today(), tr.scopes("t1")[-1].name, tr.make_event("t1").day,
                None if held is None else held.day)

    friday = (date(2026, 11, 27), "day:2026-11-27", "2026-11-27", "2026-11-27")
    assert days() == friday
    at[0] = _at(2026, 11, 27, 23, 59, 59, 999_999)
    assert days() == friday
    at[0] = _at(2026, 11, 28, 0, 0, 0, 1)
    # the new day's totals are not read yet: no reservation without a wait
    assert days() == (date(2026, 11, 28), "day:2026-11-28", "2026-11-28", None)
    await tr.load_today("t1")
    saturday = (date(2026, 11, 28), "day:2026-11-28", "2026-11-28", "2026-11-28")
    assert days() == saturday
    at[0] = _at(2026, 11, 27, 23, 58)  # set back across midnight
    assert days() == saturday
    at[0] = _at(2026, 11, 28, 0, 5)
    assert days() == saturday
    await store.put_state(DAY_BEGUN, "2026-11-30", {"session": "other"})
    assert await tr.catch_up_day() == date(2026, 11, 30)
    await tr.load_today("t1")
    assert days() == (date(2026, 11, 30), "day:2026-11-30", "2026-11-30", "2026-11-30")


def test_r1_2_loop_time_is_the_running_loops_own_clock() -> None:
    """R1.2: on asyncio the loop clock is the running loop's ``time()``: asyncio's own
    reading, or what a loop with its own clock says."""

    class Late(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 1e9

    async def main() -> list[bool]:
        loop = asyncio.get_running_loop()
        before, now, after = loop.time(), loop_time(), loop.time()
        seen = [before <= now <= after]
        if not isinstance(loop, Late):
            loop.time = lambda: 42.0  # type: ignore[method-assign]
            seen.append(loop_time() == 42.0)
        else:
            seen.append(now == 1e9)
        return seen

    assert asyncio.run(main()) == [True, True]
    late = Late()
    try:
        assert late.run_until_complete(main()) == [True, True]
    finally:
        late.close()
