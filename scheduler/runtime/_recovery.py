"""Charging the calls a killed process left open, at start and while running (R1.5).

A process killed mid-call leaves ``open_call`` records (``scheduler.budget._open_calls``).
The next tracker to open on the store charges them at their estimate; but with several
processes on one store (orchestrators, ``serve`` replicas) the others keep running, and
the killed one's calls -- which the provider may have charged -- would be missing from
the shared day total until something restarts.  So a running orchestrator also looks
every ``RECOVER_EVERY_S`` for records whose process is provably gone (same host, pid not
running; any host, its beat stopped: never a live replica's call, which it charges
itself at its real usage), and bumps its own beat.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from scheduler.budget import Tracker
from scheduler.core import EventBus, StoreError, UsageEvent, get_logger

_log = get_logger("vibe_engine.budget")
#: How often a running orchestrator charges the calls of processes gone meanwhile.
RECOVER_EVERY_S = 60.0


def announce_charged(bus: EventBus, charged: list[UsageEvent]) -> None:
    """An ``open_call_charged`` event per call charged at its estimate."""
    for event in charged:
        bus.emit(
            "open_call_charged",
            f"a call of task {event.task_id} left open by a killed run was charged "
            f"at its estimate ({event.usage.total_tokens} tokens)",
            task_id=event.task_id, level="warning", session_id=event.session_id,
            tokens=event.usage.total_tokens, cost_usd=event.cost_usd)


def announce_replaced(bus: EventBus, event: UsageEvent) -> None:
    """An ``open_call_estimate_replaced`` event: a call of this process, charged at its
    estimate by another while this one was frozen, settled and replaced that estimate."""
    bus.emit(
        "open_call_estimate_replaced",
        f"a call of task {event.task_id} charged at its estimate while this run seemed "
        f"dead (frozen) completed: its usage ({event.usage.total_tokens} tokens) "
        f"replaced the estimate", task_id=event.task_id, level="warning",
        session_id=event.session_id, tokens=event.usage.total_tokens,
        cost_usd=event.cost_usd)


def open_call_recovery(
    tracker: Tracker, bus: EventBus, *, every_s: float = RECOVER_EVERY_S,
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A service of the run: every ``every_s``, charge what processes gone since left
    open (``Tracker.recover_open_calls``) and announce it."""

    async def recover_open_calls() -> None:
        while True:
            await anyio.sleep(every_s)
            try:
                announce_charged(bus, await tracker.recover_open_calls())
            except StoreError as exc:  # the store is down: the next round tries again
                _log.warning("open_call_recovery_failed", error=str(exc))

    return recover_open_calls


async def leave(tracker: Tracker) -> None:
    """At close: this process's beat goes, so no replica waits for it to go stale.  Never
    cancelled half-way (the store closes next); a store that cannot answer only leaves
    the beat to go stale."""
    with anyio.CancelScope(shield=True):
        try:
            await tracker.close()
        except StoreError as exc:
            _log.warning("process_beat_not_removed", error=str(exc))
