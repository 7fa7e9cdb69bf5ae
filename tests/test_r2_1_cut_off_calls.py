"""R2.1 / R1.3 / R5.7: a model call the runtime cuts off after it went out -- its per-call
limit, or an abort of its task (the task's time limit here) -- may have been billed
though no answer said what.  It is charged at its estimate (``<event id>:estimate``, as a
killed process's open call is), with one ``usage_estimated`` warning, never 0 tokens.

On the virtual clock, through ``Orchestrator.run`` with the built-in question agent and
a provider that answers only after 10,000 s.
"""

from __future__ import annotations

import anyio
import pytest

from scheduler import AgentContext, Limits, TaskSpec
from scheduler.runtime import Orchestrator
from scheduler.store._base import OPEN_CALL
from scheduler.testing import ScriptedProvider
from tests._helpers import OrchestratorFactory
from tests.test_orchestrator import AGENTS

SLOW = 10_000.0  # seconds the provider takes to answer: every call is cut off


async def _estimated(orch: Orchestrator, task_id: str) -> int:
    """Tokens of ``task_id``'s events charged at an estimate (and that there is one)."""
    events = [e for e in await orch.store.events() if e.task_id == task_id]
    assert events and all(e.event_id.endswith(":estimate") for e in events)
    warned = [e for e in orch.bus.history if e.name == "usage_estimated"]
    assert [e.task_id for e in warned] == [task_id] * len(events)
    assert "cut off" in warned[0].message
    return sum(e.usage.total_tokens for e in events)


@pytest.mark.parametrize("budget", [
    Limits(time_s=3600, call_time_s=300),  # the per-call limit ends the call
    Limits(time_s=60),  # the task's time limit aborts it mid-call
], ids=["per_call_limit", "task_time_limit"])
async def test_r2_1_a_call_cut_off_after_it_went_out_is_charged_at_its_estimate(
    make_orchestrator: OrchestratorFactory, budget: Limits,
) -> None:
    """Before, the cut-off call's reservation was released and the task's usage was 0
    tokens; now its estimate (prompt estimate + all 800 output tokens its agent asks for)."""
    provider = ScriptedProvider(latency_s=SLOW)
    orch = make_orchestrator(AGENTS, provider=provider)
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What?", budget=budget)])
    outcome = report.outcomes["q"]
    assert outcome.status == "failed"
    assert len(provider.calls) >= 1
    tokens = await _estimated(orch, "q")
    assert outcome.usage.tokens == tokens > provider.calls[0].max_tokens


async def test_r2_1_an_estimate_charged_for_a_cut_off_call_is_not_charged_again(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """The cut-off call's open-call record goes with its estimate's charge: recovering
    open calls afterwards (as another process would) charges nothing more."""
    provider = ScriptedProvider(latency_s=SLOW)
    orch = make_orchestrator(AGENTS, provider=provider)
    await orch.run([TaskSpec(id="q", agent="qa", prompt="What?", budget=Limits(time_s=60))])
    tokens = await _estimated(orch, "q")
    assert await orch.store.list_state(OPEN_CALL) == {}
    assert await orch.tracker.recover_open_calls() == []
    assert await _estimated(orch, "q") == tokens
    assert (await orch.store.totals("task:q")).tokens == tokens


class _LateAgent:
    """Asks for its call a second after the run starts: the lease is taken by then."""

    async def run(self, ctx: AgentContext) -> str:
        await anyio.sleep(1)
        return (await ctx.llm.complete([{"role": "user", "content": "Late?"}])).text


async def test_r2_1_a_call_aborted_while_it_waits_for_its_lease_is_charged_nothing(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """One call at a time: the late task's call waits for the lease the first holds, and
    its time limit aborts it there.  It never reached the provider: charged 0, no
    estimate; the first task's call, answered, is charged what it reported."""
    provider = ScriptedProvider(latency_s=100)
    orch = make_orchestrator({**AGENTS, "late": _LateAgent}, provider=provider,
                             allocator={"pools": {"anthropic": {"concurrent": 1}}})
    report = await orch.run([
        TaskSpec(id="first", agent="qa", prompt="What?", budget=Limits(time_s=3600)),
        TaskSpec(id="late", agent="late", budget=Limits(time_s=60)),
    ])
    assert report.outcomes["first"].status == "completed"
    assert report.outcomes["late"].status == "failed"
    assert len(provider.calls) == 1
    assert report.outcomes["late"].usage.tokens == 0
    assert [e.task_id for e in await orch.store.events()] == ["first"]
    assert not [e for e in orch.bus.history if e.name == "usage_estimated"]
