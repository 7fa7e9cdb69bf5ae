"""Budget limits as a user gets them from ``Orchestrator.run`` (R1.1, R1.3, R3.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Completion, CompletionRequest, Limits, TaskSpec, Usage
from scheduler.config import load_config
from scheduler.runtime import AgentContext
from scheduler.testing import ScriptedProvider
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio

LONG = "please look at this carefully " * 40  # about 240 prompt tokens


class OneCall:
    async def run(self, ctx: AgentContext) -> str:
        reply = await ctx.llm.complete([{"role": "user", "content": LONG}],
                                       max_tokens=int(ctx.task.params.get("max_tokens", 64)))
        return reply.text


class Calls:
    """``n`` small calls."""

    async def run(self, ctx: AgentContext) -> int:
        for _ in range(int(ctx.task.params["n"])):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=1)
        return 0


class Sleeper:
    """Computes (sleeps) without ever calling a model."""

    async def run(self, ctx: AgentContext) -> str:
        await anyio.sleep(10_000)
        return "done"


class CachedProvider(ScriptedProvider):
    """Every answer reads 500 tokens from the prompt cache."""

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls.append(request)
        return Completion("ok", Usage(10, 5, 500, 0), request.model)


def _spec(agent: str, budget: Limits, **params: Any) -> TaskSpec:
    return TaskSpec(id="t", agent=agent, prompt="Fix the crash in the parser", budget=budget,
                    params=params)


@pytest.mark.parametrize(("budget", "max_tokens", "dimension"), [
    (Limits(prompt_tokens=50), 64, "prompt_tokens"),
    (Limits(completion_tokens=100), 1024, "completion_tokens"),
])
async def test_r1_1_prompt_and_completion_limits_are_checked_before_the_call(
    make_orchestrator: OrchestratorFactory, budget: Limits, max_tokens: int, dimension: str,
) -> None:
    """R1.1: a call whose prompt estimate or ``max_tokens`` cannot fit the prompt or
    completion limit is refused before the provider sees it (the task pauses, R3.4)."""
    provider = ScriptedProvider()
    orch = make_orchestrator({"one": OneCall}, provider=provider,
                             alerts={"decision_timeout_s": 5})
    report = await orch.run([_spec("one", budget, max_tokens=max_tokens)])
    assert provider.calls == []
    assert report.outcomes["t"].status == "finished"  # no decision came: saved and finished
    paused = [e for e in orch.bus.history if e.name == "pause_requested"]
    assert paused and dimension in paused[0].message


async def test_r1_1_a_reached_cache_limit_stops_the_next_call(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.1: cache-read tokens are known only after a call; once the limit is reached the
    next call is refused before it is made."""
    provider = CachedProvider()
    orch = make_orchestrator({"calls": Calls}, provider=provider,
                             alerts={"decision_timeout_s": 5})
    await orch.run([_spec("calls", Limits(cache_read_tokens=400), n=3)])
    assert len(provider.calls) == 1


async def test_r1_1_wall_time_limit_stops_a_task_that_never_calls(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.1/R1.3: a task's time budget is a deadline on its attempt, even when the agent
    never makes a governed call."""
    orch = make_orchestrator({"sleeper": Sleeper})
    report = await orch.run([_spec("sleeper", Limits(time_s=60))])
    outcome = report.outcomes["t"]
    assert outcome.status == "failed" and "time_s" in outcome.reason
    assert 60 <= anyio.current_time() < 61  # stopped at the limit, not after 10,000 s
    assert [e.name for e in orch.bus.history if e.name == "task_time_exceeded"]


async def test_r1_1_time_added_to_a_paused_task_moves_the_deadline(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """The deadline is read from the task's current limits: time a person adds counts."""
    orch = make_orchestrator({"sleeper": Sleeper})

    async def add_time() -> None:
        await anyio.sleep(30)
        orch.tracker.raise_limits(orch.tracker.task_scope("t"), Limits(time_s=20_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(add_time)
        report = await orch.run([_spec("sleeper", Limits(time_s=60))])
    assert report.outcomes["t"].status == "completed"


class RecordsLimits(OneCall):
    """Records the task's resolved limits."""

    seen: list[Limits] = []

    async def run(self, ctx: AgentContext) -> str:
        self.seen.append(ctx.profile.limits)
        return ""


@pytest.mark.parametrize(("prompt", "tokens", "time_s"), [
    ("Fix a typo in one file", 20_000, 300),  # code change, detected simple
    ("Fix the crash across the whole parser", 150_000, 3600),  # bug fix, detected complex
    ("Fix the crash in the parser", 80_000, 1800),  # a typical bug fix: the type's row
])
async def test_r1_3_auto_detected_complexity_sets_the_budget(
    make_orchestrator: OrchestratorFactory, prompt: str, tokens: int, time_s: float,
) -> None:
    """R1.3: an auto-detected complexity that is not the type's typical one sets tokens and
    time from the complexity table (20k / 50k / 150k); a typical task keeps its type's row."""
    RecordsLimits.seen.clear()
    orch = make_orchestrator({"a": RecordsLimits})
    await orch.run([TaskSpec(id="t", agent="a", prompt=prompt)])
    (limits,) = RecordsLimits.seen
    assert (limits.tokens, limits.time_s) == (tokens, time_s)
    assert orch.tracker.task_scope("t").limits.tokens == tokens


async def test_r3_1_cost_override_moves_the_warning_threshold(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R3.1: with ``budget.cost_usd = 100`` the 70 % warning comes at $70, not at the task
    type's $0.56."""
    orch = make_orchestrator(
        {"calls": Calls}, provider=ScriptedProvider(prompt=100, completion=0),
        models={tier: {"model_id": f"m-{tier}", "input_usd_per_mtok": 10_000,
                       "output_usd_per_mtok": 0}
                for tier in ("haiku", "sonnet", "opus")},  # 100 prompt tokens = $1
        budgets={"day": {"cost_usd": 1_000}},
    )
    spec = TaskSpec(id="t", agent="calls", prompt="Fix the crash", budget=Limits(cost_usd=100),
                    params={"n": 72}, task_type="bug_fix")
    await orch.run([spec])
    assert orch.tracker.task_scope("t").limits.cost_warning_usd == 70
    warnings = [e for e in orch.bus.history
                if e.name == "budget_warning" and e.data.get("dimension") == "cost_usd"
                and str(e.data.get("scope", "")).startswith("task:")]
    assert [round(e.data["used"]) for e in warnings] == [70]


async def test_r1_3_a_negative_zero_limit_is_zero_and_never_printed_as_minus_zero(
    make_orchestrator: OrchestratorFactory, tmp_path: Path,
) -> None:
    """R1.3: ``cost_usd = -0.0`` in a config file is a limit of zero (it passes ``>= 0``, as
    0 does); the pause it causes says ``limit 0``, never ``limit -0``."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'state_dir = "{tmp_path}"\nstore = "memory"\nsession_id = "s1"\n'
                   "[alerts]\ndecision_timeout_s = 5\n"
                   "[budgets.day]\ncost_usd = -0.0\n"
                   "[budgets.task_time_s_by_complexity]\nsimple = -0.0\n")
    config = load_config(cfg)
    assert str(config.budgets.day.cost_usd) == "0.0"
    assert str(config.budgets.task_time_s_by_complexity["simple"]) == "0.0"
    provider = ScriptedProvider()
    orch = make_orchestrator({"one": OneCall}, provider=provider, config=config)
    await orch.run([_spec("one", Limits())])
    assert provider.calls == []
    paused = [e for e in orch.bus.history if e.name == "pause_requested"]
    assert paused and all("limit -0" not in e.message for e in paused), paused
    assert "cost_usd used 0 + requested" in paused[0].message
    assert paused[0].message.endswith("> limit 0"), paused[0].message
