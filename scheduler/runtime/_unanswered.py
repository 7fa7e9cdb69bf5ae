"""An attempt that got no answer (R2.1): what it is charged, and model health."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from scheduler.allocator import Lease
from scheduler.budget import Estimate, Reservation
from scheduler.core import Completion, ProviderError, Usage
from scheduler.routing._health import error_kind_of
from scheduler.runtime._call import CUT_OFF
from scheduler.tasks import TaskHandle

if TYPE_CHECKING:
    from scheduler.runtime._gateway import Gateway


async def unanswered(gateway: Gateway, task: TaskHandle, exc: BaseException, started: float,
                     est: Estimate, reservation: Reservation, lease: Lease) -> None:
    """A provider's failure -- model health, and the usage it reported (a dropped
    stream) -- or a call cut off after it went out (an abort's cancellation, the per-call
    limit): the provider may have billed that one though no answer told what, so it is
    charged at its estimate, as a killed process's open call is, never 0.  A failure
    that reports nothing (a 529, a 5xx) and a provider's own bug charge nothing."""
    model = est.model
    if isinstance(exc, ProviderError):
        gateway.health.record_call(model, False, gateway.clock() - started,
                                   error_kind_of(exc))
        cut, reported = exc.cut_off, exc.usage
    else:
        cut, reported = isinstance(exc, anyio.get_cancelled_exc_class()), None
    if not reservation.active or not (cut or reported):
        return
    answer = Completion("", reported or Usage(), model, stop_reason=CUT_OFF if cut else "error",
                        usage_missing=cut)
    crossings = await gateway.settle(task, model, answer, est, reservation, lease)
    await gateway.signal(task, crossings)
