"""Replanning applied by the runtime itself (SPEC R6.2, R6.7, R4.3), through the orchestrator.

The policy and the :class:`~scheduler.routing._replan.Replanner` helpers are tested in
``test_replan.py``; here the real orchestrator and gateway apply the decisions:
a task whose model is down is split (R6.2) or deferred (R6.7) before its
attempt, a routed call in a nearly spent budget is simplified (R6.7), and an
attempt that fails after its model finished teaches the router (R4.3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from agents import AgentContext
from scheduler import (
    Completion,
    CompletionRequest,
    Event,
    TaskSpec,
    Usage,
)
from scheduler.routing import task_info
from scheduler.runtime import Orchestrator, RunReport
from scheduler.testing import build_orchestrator, run_virtual
from tests._routing_helpers import knock_out

DESIGN = "Design the storage architecture and weigh the trade-offs"


class Provider:
    """1 s per call, always answers; records (task, model)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        await anyio.sleep(1.0)
        self.calls.append((request.task_id, request.model))
        return Completion("done", Usage(1_000, 500), request.model, quality=0.9)

    async def aclose(self) -> None:
        return None


class Designer:
    """One routed call; returns what it saw (its task id, whether it was told to simplify)."""

    async def run(self, ctx: AgentContext) -> dict[str, Any]:
        await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}])
        return {"task": ctx.task.id, "simplify": ctx.simplify}


class Splitter(Designer):
    """A Designer with its own ``decompose`` hook (R6.2)."""

    def decompose(self, spec: TaskSpec) -> list[TaskSpec]:
        return [
            spec.model_copy(update={"id": f"{spec.id}.schema", "prompt": "Write the schema",
                                    "complexity": "simple"}),
            spec.model_copy(update={"id": f"{spec.id}.api", "prompt": "Write the API layer",
                                    "complexity": "simple"}),
        ]


class Crasher:
    """Calls its model, then fails (the task failed after the model finished)."""

    async def run(self, ctx: AgentContext) -> None:
        await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}])
        raise RuntimeError("tests failed after the edit")


def make(tmp_path: Path, agents: dict[str, Any], **cfg: Any) -> tuple[Orchestrator, Provider,
                                                                     list[Event]]:
    provider = Provider()
    orch = build_orchestrator(agents, state_dir=tmp_path, provider=provider, **cfg)
    events: list[Event] = []
    orch.bus.subscribe(events.append)
    return orch, provider, events


def run_down(orch: Orchestrator, specs: list[TaskSpec], *down: str) -> RunReport:
    """Run ``specs`` on a virtual clock with the ``down`` models knocked out first."""

    async def main() -> RunReport:
        for model in down:
            knock_out(orch.gateway.health, model)
        return await orch.run(specs)

    return run_virtual(main)


def test_r6_2_runtime_breaks_down_a_complex_task_when_only_haiku_is_left(
    tmp_path: Path,
) -> None:
    """R6.2: opus and sonnet down → the orchestrator splits the task through the agent's
    ``decompose`` hook, runs the parts and an added verification step on haiku, and the
    original task completes with the verification's result."""
    orch, provider, events = make(tmp_path, {"split": Splitter})
    spec = TaskSpec(id="t1", agent="split", prompt=DESIGN, priority="user_waiting")
    report = run_down(orch, [spec], "opus", "sonnet")

    status = {k: o.status for k, o in report.outcomes.items()}
    assert status == {"t1": "completed", "t1.schema": "completed", "t1.api": "completed",
                      "t1.verify": "completed"}
    assert orch.handles["t1"].result == {"task": "t1.verify", "simplify": False}
    assert {m for _, m in provider.calls} == {"haiku"}
    assert "t1" not in {t for t, _ in provider.calls}  # the original made no call itself
    split = [e for e in events if e.name == "task_broken_down"]
    assert len(split) == 1 and split[0].task_id == "t1"
    assert orch.handles["t1.verify"].spec.depends_on == ("t1.schema", "t1.api")


def test_r6_2_runtime_generic_split_without_a_hook(tmp_path: Path) -> None:
    """R6.2: without ``decompose`` the task is split into one task per known part (its
    ``params['parts']``), each limited in scope, plus verification."""
    orch, provider, _ = make(tmp_path, {"d": Designer})
    spec = TaskSpec(id="t1", agent="d", prompt=DESIGN, priority="user_waiting",
                    params={"parts": ["store.py", "api.py"]})
    report = run_down(orch, [spec], "opus", "sonnet")
    assert {k for k, o in report.outcomes.items() if o.status == "completed"} == {
        "t1", "t1.part1", "t1.part2", "t1.verify"}
    assert "Only this part: store.py" in orch.handles["t1.part1"].spec.prompt
    assert {m for _, m in provider.calls} == {"haiku"}


async def test_r6_7_runtime_defers_then_resumes_on_the_preferred_model(tmp_path: Path) -> None:
    """R6.7 defer: opus down → a complex normal-priority task waits (state ``deferred``,
    no call made) until opus serves it again, then runs on opus; one notice each way."""
    orch, provider, events = make(tmp_path, {"d": Designer})
    health = orch.gateway.health
    seen: list[str] = []

    knock_out(health, "opus")

    async def recover() -> None:
        await anyio.sleep(30)
        seen.append(orch.handles["t1"].status)
        await health.check_once()  # the 60 s check finds opus answering (R6.4) …
        for _ in range(health.params.restore_after_successes):  # … and probes succeed
            health.record_call("opus", True, 0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(recover)
        await orch.run([TaskSpec(id="t1", agent="d", prompt=DESIGN, priority="normal")])
    assert seen == ["deferred"]
    assert [c for c in provider.calls if c[0] != "health-check"] == [("t1", "opus")]
    assert [e.name for e in events if e.name in ("task_deferred", "task_resumed")] == [
        "task_deferred", "task_resumed"]


async def test_r6_7_runtime_simplifies_when_the_budget_is_critical(tmp_path: Path) -> None:
    """R6.7 simplify: with ≥ 90 % of the task's budget used, the runtime tells the agent
    (``ctx.simplify``) to do only the key part, once."""
    orch, _, events = make(tmp_path, {"d": Designer})

    handle = orch.add_tasks([TaskSpec(id="t1", agent="d", prompt="Fix the off-by-one bug")])[0]
    orch.tracker.fraction_used = lambda task_id, scopes=None: 0.95  # type: ignore[method-assign]
    await orch.run([])
    assert handle.result == {"task": "t1", "simplify": True}
    assert [e.name for e in events].count("task_simplified") == 1


async def test_r4_3_failed_attempts_on_haiku_retry_then_upgrade_and_teach(tmp_path: Path) -> None:
    """R4.3: a task that fails after its model finished is a wrong-choice signal. Haiku
    failing twice retries the task on sonnet (logged), and similar later tasks score
    higher; attempts stay bounded by ``routing.max_attempts``."""
    orch, provider, events = make(tmp_path, {"c": Crasher})
    prompt = "Update the docstring of the config loader"
    specs = [TaskSpec(id=f"t{i}", agent="c", prompt=prompt, task_type="code_modification")
             for i in (1, 2)]
    report = await orch.run(specs[:1])
    assert provider.calls == [("t1", "haiku"), ("t1", "haiku"), ("t1", "sonnet")]
    outcome = report.outcomes["t1"]
    assert outcome.status == "failed" and outcome.attempts == 3
    assert [e.name for e in events].count("task_retried") == 2
    upgrade = next(e for e in events if e.name == "routing_upgrade")
    assert upgrade.message == "upgrading from haiku to sonnet due to quality issues"
    assert orch.gateway.router.min_tier("t1") is None  # per-task state dropped at the end

    # the router learned: a similar task scores higher (a correction adds
    # complexity.correction_points; similar successes take it back a little at a time)
    later = orch.add_tasks(specs[1:])[0]
    assessment = orch.gateway.router.complexity.assess(task_info(later))
    assert assessment.learned and assessment.score > assessment.raw_score
