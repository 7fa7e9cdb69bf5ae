"""SIGTERM ends a run as Ctrl-C does (R7.2).

A service manager, a container runtime or ``kill`` stops a process with SIGTERM.  With
Python's default action the process died at once: no task's end recorded, no session
end, ``usage.json`` one flush behind.  Here SIGTERM cancels the run as the first Ctrl-C
does -- every task's shielded clean-up runs, running tasks are recorded interrupted
(``vibe-engine resume`` continues them) -- and the process exits 143 (128 + SIGTERM),
as a process ended by it does.  A second SIGTERM meanwhile gets the default action.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

#: The exit status of a run ended by SIGTERM.
EXIT_TERMINATED = 128 + signal.SIGTERM


async def _cancel_on_sigterm(scope: anyio.CancelScope, got: list[int]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for signum in signals:
            got.append(signum)
            scope.cancel()
            return  # the handler goes: a second SIGTERM ends the process at once


async def until_sigterm(run: Callable[[], Awaitable[T]]) -> T | None:
    """``run()``; None when SIGTERM cancelled it (its clean-up ran)."""
    got: list[int] = []
    result: T | None = None
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_sigterm, tg.cancel_scope, got)
        try:
            result = await run()
        except Exception as exc:  # raised as it is (a refusal is one line, exit 2), not
            error = exc  # inside the task group's exception group
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return None if got else result
