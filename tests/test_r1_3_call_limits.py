"""R1.3 on asyncio: every call's per-call limit is kept by one loop timer
(``runtime._call_limits``), not a deadline scope per call.  These run on asyncio with
real time (the limits are a fraction of a second): the virtual-clock tests elsewhere
run on trio, where each call gets its own deadline scope."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from scheduler import Completion, CompletionRequest, Limits, TaskSpec, Usage
from scheduler.runtime import AgentContext
from scheduler.runtime._call_limits import CallLimits
from tests._helpers import OrchestratorFactory

pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]  # asyncio's timer is under test


class Asks:
    async def run(self, ctx: AgentContext) -> str:
        reply = await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=50)
        return reply.text


class SlowFor:
    """Answers after the seconds its task's prompt names ("hang" = an hour)."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        wait = {"hang": 3600.0, "quick": 0.0}.get(request.task_id, 0.3)
        try:
            await anyio.sleep(wait)
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(request.task_id)
            raise
        return Completion("ok", Usage(10, 5), request.model)

    async def aclose(self) -> None:
        return None


def _limited(task_id: str, call_time_s: float) -> TaskSpec:
    return TaskSpec(id=task_id, agent="a", prompt="Rename the helper",
                    budget=Limits(time_s=60, call_time_s=call_time_s))


async def test_r1_3_a_call_past_its_limit_is_cut_on_asyncio(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """A stuck call is ended at its limit; calls within theirs run to their answer --
    also one with a longer limit started earlier, and one answered at once."""
    provider = SlowFor()
    orch = make_orchestrator({"a": Asks}, provider=provider)
    report = await orch.run([_limited("slow", 30), _limited("hang", 0.2),
                             _limited("quick", 0.2)])
    out = report.outcomes
    assert out["hang"].status == "failed"
    assert "per-call limit of 0.2 s" in (out["hang"].reason or "")
    # the stuck calls themselves were cancelled (each tier's, as it fell back), no other
    assert set(provider.cancelled) == {"hang"} and len(provider.cancelled) == 3
    assert out["slow"].status == "completed" and out["quick"].status == "completed"


async def test_r1_3_the_timer_looks_past_calls_that_ended() -> None:
    """Calls that end are forgotten at once; the timer, set for the earliest deadline,
    cancels only the calls still running past theirs and is set again for the next."""
    limits = CallLimits()
    now = asyncio.get_running_loop().time()
    early = [limits.scope(now, 0.05) for _ in range(3)]
    later = limits.scope(now, 0.15)
    for scope in early[:2]:
        limits.ended(scope, 0.05)  # answered in time
    await anyio.sleep(0.1)
    assert [s.cancel_called for s in early] == [False, False, True]
    assert not later.cancel_called
    await anyio.sleep(0.15)
    assert later.cancel_called
