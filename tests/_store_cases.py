"""Shared cases of the store tests: usage events, session limits and a tracker on a store."""

from __future__ import annotations

from datetime import date
from typing import Any

from scheduler import Limits, TaskSpec, Usage, UsageEvent, VibeConfig
from scheduler.budget import Tracker, resolve_task
from scheduler.core import FixedWallClock
from scheduler.store import Store
from scheduler.store._ledger import ScopeLimit

DAY = "2026-11-27"


def ev(n: int, *, task: str = "t1", session: str = "s1", day: str = DAY, model: str = "sonnet",
       prompt: int = 100, completion: int = 50, cost: float = 0.01, file_edits: int = 0,
       shell_commands: int = 0, dangerous_commands: int = 0) -> UsageEvent:
    return UsageEvent(
        event_id=f"e{n}", task_id=task, session_id=session, day=day, at=1_700_000_000.0 + n,
        agent="coder", model=model, usage=Usage(prompt, completion, 7, 3, 2), cost_usd=cost,
        file_edits=file_edits, shell_commands=shell_commands,
        dangerous_commands=dangerous_commands,
    )



def session_limits(limit: int, *, model_limit: int | None = None) -> tuple[ScopeLimit, ...]:
    return (ScopeLimit("session:s1", tokens=limit, model_tokens=model_limit),
            ScopeLimit(f"day:{DAY}", cost_usd=1.0))



def session_config(session_tokens: int) -> VibeConfig:
    return VibeConfig.model_validate({
        "budgets": {"session": Limits(tokens=session_tokens).model_dump(), "day": {}},
    })


async def open_tracker(store: Store, cfg: VibeConfig, task: str) -> Tracker:
    tr = Tracker(store, cfg, session_id="shared", wall=FixedWallClock(date(2026, 11, 27)))
    await tr.open()
    spec = TaskSpec(id=task, agent="coder", prompt="Fix the bug in parser")
    await tr.start_task(task, resolve_task(spec, cfg), agent="coder")
    return tr


def disk_full_once(monkeypatch: Any) -> None:
    """The next rewrite of a spool after its replay fails as on a full disk (then they
    work again): what a store must survive without failing a write."""
    from scheduler.store._spool import Spool

    real_drop = Spool.drop_first
    failures = [OSError(28, "No space left on device")]

    def drop_first(self: Spool, n: int) -> None:
        if failures:
            raise failures.pop()
        real_drop(self, n)

    monkeypatch.setattr(Spool, "drop_first", drop_first)
