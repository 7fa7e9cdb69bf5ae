"""An attempt that got no answer (R2.1): what it is charged, and model health.

Kept out of the gateway so its hot path stays as it is: only a failed or cut-off call
comes here.  The gateway is seen through :class:`Settles`, not imported (it imports
this module).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import anyio

from scheduler.allocator import Lease
from scheduler.budget import Crossing, Estimate, Reservation
from scheduler.core import Completion, ProviderError, Usage
from scheduler.routing import HealthMonitor
from scheduler.routing._health import error_kind_of
from scheduler.runtime._call import CUT_OFF
from scheduler.tasks import TaskHandle


class Settles(Protocol):
    """What :func:`unanswered` uses of the gateway."""

    @property
    def health(self) -> HealthMonitor: ...

    async def settle(self, task: TaskHandle, model: str, completion: Completion,
                     estimate: Estimate, reservation: Reservation,
                     lease: Lease | None = None) -> list[Crossing]: ...

    async def signal(self, task: TaskHandle, crossings: Sequence[Crossing]) -> None: ...


async def unanswered(gateway: Settles, model: str, task: TaskHandle, exc: BaseException,
                     elapsed: float, est: Estimate, reservation: Reservation,
                     lease: Lease) -> None:
    """A provider's failure -- model health, and the usage it reported (a dropped
    stream) -- or a call cut off after it went out (an abort's cancellation, the per-call
    limit): the provider may have billed that one though no answer told what, so it is
    charged at its estimate, as a killed process's open call is, never 0.  A failure
    that reports nothing (a 529, a 5xx) and a provider's own bug charge nothing.

    Only a call that went out comes here: one cancelled while it waited for its lease or
    its admission never reached the provider, and its reservation is released unpaid."""
    if isinstance(exc, ProviderError):
        gateway.health.record_call(model, False, elapsed, error_kind_of(exc))
        cut, reported = exc.cut_off, exc.usage
    else:
        cut, reported = isinstance(exc, anyio.get_cancelled_exc_class()), None
    if not reservation.active or not (cut or reported is not None):
        return
    answer = Completion("", reported or Usage(), model,
                        stop_reason=CUT_OFF if cut else "error", usage_missing=cut)
    crossings = await gateway.settle(task, model, answer, est, reservation, lease)
    await gateway.signal(task, crossings)
