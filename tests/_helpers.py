"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any, TypeVar

import anyio
import trio.testing

from scheduler import TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.budget import Tracker as Tracker
from scheduler.budget import resolve_task
from scheduler.core import FixedWallClock
from scheduler.store import Store

T = TypeVar("T")

FRIDAY = date(2026, 11, 27)
SATURDAY = date(2026, 11, 28)


def run_virtual(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn`` on trio with a MockClock that jumps when every task is blocked."""
    return anyio.run(
        fn, *args, backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )


def event(
    n: int, *, task: str = "t1", session: str = "s1", day: str = "2026-11-27",
    model: str = "sonnet", prompt: int = 100, completion: int = 50, cost: float = 0.001,
    cache_read: int = 0, cache_write: int = 0, file_edits: int = 0, shell_commands: int = 0,
    dangerous_commands: int = 0,
) -> UsageEvent:
    return UsageEvent(
        event_id=f"e{n}", task_id=task, session_id=session, day=day, at=1_700_000_000.0 + n,
        agent="coder", model=model,
        usage=Usage(prompt, completion, cache_read, cache_write, 0), cost_usd=cost,
        file_edits=file_edits, shell_commands=shell_commands,
        dangerous_commands=dangerous_commands,
    )


async def tracker_with_task(
    store: Store, config: VibeConfig | None = None, *, task: TaskSpec | None = None,
    session: str = "s1", day: date = FRIDAY,
) -> Tracker:
    config = config or VibeConfig()
    tr = Tracker(store, config, session_id=session, wall=FixedWallClock(day))
    await tr.open()
    spec = task or TaskSpec(id="t1", agent="coder", prompt="Fix the bug in parser")
    await tr.start_task(spec.id, resolve_task(spec, config), agent=spec.agent)
    return tr
