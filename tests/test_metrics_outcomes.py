"""Every timed model call is counted once in ``vibe_calls_total`` (#23, R2.1): a call
cancelled mid-flight -- here by its task's wall-time budget (R1.1) -- counts as outcome
``cancelled``, so the call-duration histogram and the call counter agree."""

from __future__ import annotations

from agents.builtin import QuestionAnswerAgent
from scheduler import Limits, TaskSpec
from scheduler.testing import ScriptedProvider
from tests._helpers import OrchestratorFactory


async def test_r1_1_a_call_cut_by_the_task_deadline_counts_as_cancelled(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """The provider takes 100 s; one task may run 10 s, another 600 s.  The first call is
    cancelled at the deadline (outcome ``cancelled``), the second answers (``ok``); the
    duration histogram holds both calls.  The cut-off call went out, so it is charged at
    its estimate (R2.1), and like every charged call it counts at settle too: ``ok``
    counts the calls the store charged (2), ``cancelled`` how the first one ended."""
    orch = make_orchestrator(
        {"qa": QuestionAnswerAgent}, provider=ScriptedProvider(latency_s=100.0),
        metrics={"enabled": True, "port": 0},
    )
    specs = [TaskSpec(id="short", agent="qa", prompt="What is this?", budget=Limits(time_s=10)),
             TaskSpec(id="long", agent="qa", prompt="What is this?", budget=Limits(time_s=600))]
    report = await orch.run(specs)
    assert report.outcomes["long"].status == "completed"
    assert report.outcomes["short"].status != "completed"
    metrics = orch.observers.metrics
    assert metrics is not None
    value = metrics.registry.get_sample_value
    cancelled = sum(value("vibe_calls_total", {"model": m, "outcome": "cancelled"}) or 0
                    for m in ("haiku", "sonnet", "opus"))
    ok = sum(value("vibe_calls_total", {"model": m, "outcome": "ok"}) or 0
             for m in ("haiku", "sonnet", "opus"))
    durations = sum(value("vibe_call_duration_seconds_count", {"model": m}) or 0
                    for m in ("haiku", "sonnet", "opus"))
    assert (cancelled, ok, durations) == (1, 2, 2)
    assert report.outcomes["short"].usage.calls == 1
