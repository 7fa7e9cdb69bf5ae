"""R4.4: the saving the routing benchmark claims, asserted with its seed spread, and the
same workload driven through the gateway (``Orchestrator.run``), not the router alone."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from benchmarks._routing_sim import (
    CONTEXT_TOKENS,
    MAX_ATTEMPTS,
    SimTask,
    attempt,
    run_arm,
    workload,
)
from scheduler import Completion, CompletionRequest, Limits, TaskSpec, Usage, VibeConfig
from scheduler.routing import task_info
from scheduler.runtime import AgentContext
from scheduler.testing import build_orchestrator

SEED = 0


def test_r4_4_routing_saves_what_the_benchmark_claims() -> None:
    """R4.4: benchmarks/routing.md claims 43.3 % (per seed 42.7–44.2 on 5,000 tasks) at
    99.86 % of the success rate.  On the quick size (1,000 tasks, seeds 0–2, per seed
    42.0–45.1) every seed saves at least the 40 % target, the median lies in the claimed
    band, and at least 99 % of the success rate is kept."""
    cfg = VibeConfig()
    cuts, kept = [], []
    for seed in range(3):
        tasks = workload(seed, 1_000, cfg)
        routed = run_arm(seed, tasks, cfg, routed=True)
        base = run_arm(seed, tasks, cfg, routed=False)
        cuts.append(100 * (1 - routed.cost_usd / base.cost_usd))
        kept.append(routed.success_rate / base.success_rate)
        assert routed.upgrades > 0 and set(routed.by_model) == {"haiku", "sonnet", "opus"}
    assert min(cuts) >= 40.0, cuts
    assert 42.0 <= statistics.median(cuts) <= 45.5, cuts
    assert min(kept) >= 0.99, kept


# -- through the gateway -----------------------------------------------------------------


class SimProvider:
    """Answers each call as the benchmark's simulation would: attempt ``k`` of a task's
    call on a tier succeeds or fails with the simulation's luck, and carries the
    simulated judge's score as its quality (the provider scores, like SimulatedProvider)."""

    def __init__(self, tasks: list[SimTask]) -> None:
        self.tasks = tasks
        self.attempts: Counter[tuple[int, int]] = Counter()
        self.last_ok: dict[tuple[int, int], bool] = {}
        self.by_model: Counter[str] = Counter()

    async def complete(self, request: CompletionRequest) -> Completion:
        await anyio.sleep(0.01)
        i, step = request.hints["sim"]
        task = self.tasks[i]
        k = self.attempts[(i, step)]
        self.attempts[(i, step)] += 1
        ok, quality, tokens = attempt(SEED, task, min(k, MAX_ATTEMPTS - 1), request.model, step)
        self.last_ok[(i, step)] = ok
        self.by_model[request.model] += 1
        prompt = (2 * tokens + CONTEXT_TOKENS if step < 0
                  else task.explore[step].read_tokens + CONTEXT_TOKENS)
        return Completion("answer", Usage(prompt, tokens), request.model, quality=quality)

    async def aclose(self) -> None:
        return None


class SimAgent:
    """One simulated task: its exploration calls, then its main call; a call whose work
    then fails is tried again (at most 3 tries), and the failure is reported."""

    provider: SimProvider
    always: str | None = None

    async def run(self, ctx: AgentContext) -> bool:
        i = int(ctx.task.params["sim"])
        task = self.provider.tasks[i]
        ok = False
        for step in [*range(len(task.explore)), -1]:
            info = task.info if step < 0 else task.explore[step].info
            hints: dict[str, Any] = {"sim": (i, step),
                                     "expected_output_tokens": info.expected_output_tokens,
                                     "reasoning_depth": info.reasoning_depth}
            for _ in range(MAX_ATTEMPTS):
                reply = await ctx.llm.complete(
                    [{"role": "user", "content": info.prompt}], model=self.always,
                    max_tokens=int((info.expected_output_tokens or 1_000) * 1.2) + 1,
                    hints=hints)
                ok = self.provider.last_ok[(i, step)]
                if ok:
                    break
                if self.always is None:  # R4.3: the work failed after the model finished
                    ctx.gateway.router.report_outcome(task_info(ctx.handle, hints),
                                                      reply.model, success=False)
        return ok


def _arm(tmp_path: Path, tasks: list[SimTask], always: str | None) -> tuple[float, int]:
    provider = SimProvider(tasks)
    agent = type("Agent", (SimAgent,), {"provider": provider, "always": always})
    unlimited = Limits(tokens=None, cost_usd=None, time_s=None, call_time_s=None)
    config = VibeConfig.model_validate({
        "state_dir": tmp_path, "store": "memory", "session_id": "s1",
        "budgets": {"session": Limits(), "day": Limits(), "task": Limits()},  # all off
        "allocator": {"pools": {"anthropic": {"tokens_per_minute": None,
                                              "requests_per_minute": None,
                                              "concurrent": None}}},
        "observe": {"status_interval_s": None, "history": False},
    })
    orch = build_orchestrator({"sim": agent}, config=config, provider=provider)
    specs = [TaskSpec(id=t.info.task_id, agent="sim", prompt=t.info.prompt,
                      task_type=t.info.task_type, complexity=t.info.complexity,
                      budget=unlimited, params={"sim": t.index}) for t in tasks]

    async def main() -> float:
        report = await orch.run(specs)
        assert all(o.status == "completed" for o in report.outcomes.values())
        return report.total.cost_usd

    cost = anyio.run(main)
    succeeded = sum(1 for t in tasks if orch.handles[t.info.task_id].result)
    return cost, succeeded


@pytest.mark.slow
def test_r4_4_the_saving_holds_through_the_gateway(tmp_path: Path) -> None:
    """R4.4 through the gateway: the same simulated tasks, run by agents whose calls are
    routed, admitted, leased, settled and corrected by the real runtime, cost 30–50 % less
    (R4.4's range) than the same agents calling opus for everything, at ≥ 95 % of the
    successes.  (Seed 0, 200 tasks: 36.8 %.  Below the router-only 45 % of this seed: the
    gateway assesses every call of a task with the task's own text, so the cheap
    exploration calls of an architecture task go to sonnet, not haiku.)"""
    cfg = VibeConfig()
    tasks = workload(SEED, 200, cfg)
    routed_cost, routed_ok = _arm(tmp_path / "routed", tasks, None)
    opus_cost, opus_ok = _arm(tmp_path / "opus", tasks, "opus")
    saving = 100 * (1 - routed_cost / opus_cost)
    assert 30.0 <= saving <= 50.0, saving
    assert routed_ok >= 0.95 * opus_ok, (routed_ok, opus_ok)
