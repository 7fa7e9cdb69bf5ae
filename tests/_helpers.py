"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from scheduler import Orchestrator, Provider, TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.budget import Tracker as Tracker
from scheduler.budget import resolve_task
from scheduler.core import FixedWallClock, WallClock
from scheduler.store import Store
from scheduler.testing import FRIDAY

SATURDAY = date(2026, 11, 28)


class OrchestratorFactory(Protocol):
    """The ``make_orchestrator`` fixture (see ``scheduler.testing.build_orchestrator``)."""

    def __call__(
        self, agents: Mapping[str, Callable[[], Any]], *, provider: Provider | None = None,
        store: Store | None = None, wall: WallClock | None = None,
        config: VibeConfig | None = None, state_dir: Path | None = None, **settings: Any,
    ) -> Orchestrator: ...


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
