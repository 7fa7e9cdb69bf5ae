"""Shared fixtures of the alert / pause / overdraft tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import anyio

from scheduler import Event, Limits, Usage
from scheduler.budget import Crossing, Reservation, TaskProfile, Tracker
from scheduler.config import TIERS, VibeConfig, config_from_dict
from scheduler.control import AlertRuntime, OverdraftLedger, PauseController
from scheduler.core import EventBus, FixedWallClock
from scheduler.store import MemoryStore, SqliteStore, Store

DAY = date(2026, 11, 25)  # a Wednesday: weekday day budget


def make_config(session: dict[str, Any] | None = None, **extra: Any) -> VibeConfig:
    """A config whose session/day budgets are off unless given."""
    # a section is laid over its defaults: every key (and tier) not given is turned off
    tiers = {tier: "unlimited" for tier in TIERS}
    off: dict[str, Any] = {**{name: None for name in Limits.model_fields},
                           "tokens_by_model": tiers}
    given = dict(session or {})
    given["tokens_by_model"] = {**tiers, **given.get("tokens_by_model", {})}
    data: dict[str, Any] = {
        "budgets": {"session": {**off, **given}, "day": off,
                    "weekend_day_cost_usd": None},
        **extra,
    }
    return config_from_dict(data)


def profile(**limits: Any) -> TaskProfile:
    return TaskProfile("code_modification", "moderate", Limits(**limits), False, False)


@dataclass
class Harness:
    """A tracker with the alert runtime, pause controller and overdraft ledger wired up."""

    store: Store
    config: VibeConfig
    tracker: Tracker
    events: EventBus
    ledger: OverdraftLedger
    controller: PauseController
    alerts: AlertRuntime

    def names(self, prefix: str = "") -> list[str]:
        return [e.name for e in self.events.history if e.name.startswith(prefix)]

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events.history if e.name == name]

    async def charge(
        self, task_id: str, *, model: str = "", tokens: int = 0, cost: float = 0.0,
        file_edits: int = 0, shell_commands: int = 0, reservation: Reservation | None = None,
    ) -> list[Crossing]:
        """Charge usage like the gateway does, then apply alerts for the crossings."""
        usage = Usage(prompt_tokens=tokens) if tokens else None
        event = self.tracker.make_event(
            task_id, model=model, usage=usage, cost_usd=cost, file_edits=file_edits,
            shell_commands=shell_commands,
        )
        crossings = await self.tracker.charge(event, reservation)
        await self.alerts.apply(task_id, crossings)
        return crossings


async def open_harness(
    config: VibeConfig | None = None, *, store: Store | None = None,
    tasks: dict[str, TaskProfile] | None = None, session_id: str = "s1",
    poll_s: float | None = 1.0,
) -> Harness:
    cfg = config or make_config()
    st = store or MemoryStore()
    await st.open()
    tracker = Tracker(st, cfg, session_id=session_id, wall=FixedWallClock(DAY))
    await tracker.open()
    events = EventBus(anyio.current_time)
    ledger = OverdraftLedger(tracker, st, cfg.overdraft, events)
    controller = PauseController(st, tracker, events, overdraft=ledger, poll_s=poll_s)
    await controller.open()
    alerts = AlertRuntime(tracker, events, controller=controller)
    for task_id, prof in (tasks or {}).items():
        await tracker.start_task(task_id, prof, agent="test")
        await controller.restore_task(task_id)
    return Harness(st, cfg, tracker, events, ledger, controller, alerts)


def sqlite_store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "vibe.db")
