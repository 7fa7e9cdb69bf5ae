"""The connections the composition root makes, each seen from ``Orchestrator.run``.

Each test fails when its hook-up line is removed (mutation-checked): the gateway's
demotion input after a settle, the wait-for graph's blocking boost, the pause →
release-leases hook-up, the deadlock resolver's own lease release, and the run's
``on_forget`` reaching the parts that hold a task by id.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Completion, CompletionRequest, Limits, TaskSpec, Usage
from scheduler.allocator import Allocator
from scheduler.config import config_from_dict
from scheduler.runtime import AgentContext, Orchestrator
from scheduler.testing import ScriptedProvider
from tests._deadlock_helpers import LockingAgent, make_orch, spec
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio

ONE_SLOT = {"pools": {"anthropic": {"concurrent": 1}}}


class PerTaskProvider(ScriptedProvider):
    """Latency and usage by task id (default: 0.01 s, 100 + 50 tokens)."""

    def __init__(self, latency: dict[str, float], usage: dict[str, Usage] | None = None) -> None:
        super().__init__()
        self.latency = latency
        self.usage = usage or {}
        self.started: list[tuple[str, float]] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls.append(request)
        self.started.append((request.task_id, anyio.current_time()))
        await anyio.sleep(self.latency.get(request.task_id, 0.01))
        return Completion("ok", self.usage.get(request.task_id, Usage(100, 50)), request.model)


class Script:
    """Sleeps ``params.sleep`` seconds, then makes ``params.calls`` calls ``params.gap``
    seconds apart."""

    async def run(self, ctx: AgentContext) -> str:
        params = ctx.task.params
        await anyio.sleep(float(params.get("sleep", 0)))
        for i in range(int(params.get("calls", 1))):
            if i:
                await anyio.sleep(float(params.get("gap", 0)))
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=1)
        return "ok"


async def _sample_priorities(orch: Orchestrator, holder: str, out: list[int],
                             until: float) -> None:
    """Every second until ``until``: the effective priority of ``holder``'s waits."""
    while anyio.current_time() < until:
        await anyio.sleep(1)
        out += [w.effective_priority for w in orch.allocator.statistics().waiters
                if w.holder == holder]


async def _run_sampling(orch: Orchestrator, specs: list[TaskSpec], holder: str,
                        until: float) -> list[int]:
    seen: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_sample_priorities, orch, holder, seen, until)
        await orch.run(specs)
    return seen


async def test_r5_2_a_settle_feeds_demotion_to_the_allocator(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.2 wiring: after a call that takes a task past 50 % of its tokens, its next wait
    for a lease is one level lower (the gateway feeds ``set_token_fraction``)."""
    provider = PerTaskProvider({"hog": 20}, {"spender": Usage(10, 590)})
    orch = make_orchestrator({"s": Script}, provider=provider, allocator=ONE_SLOT)
    specs = [
        TaskSpec(id="spender", agent="s", prompt="Fix the crash", budget=Limits(tokens=1_000),
                 params={"calls": 2, "gap": 2}),
        TaskSpec(id="hog", agent="s", prompt="Fix the crash", params={"sleep": 1}),
    ]
    # spender's first call ends at once; hog then holds the slot for 20 s from 1 s, and
    # spender's second call (at 2 s) waits for it
    seen = await _run_sampling(orch, specs, "spender", until=15)
    assert seen and set(seen) == {1}  # normal (2) − 1


async def test_r5_2_a_task_others_wait_on_is_boosted(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.2 wiring: a background task that another task depends on waits for its lease at
    priority 3 (the wait-for graph's ``on_blocking`` → ``allocator.set_blocking``)."""
    provider = PerTaskProvider({"hog": 20})
    orch = make_orchestrator({"s": Script}, provider=provider, allocator=ONE_SLOT)
    specs = [
        TaskSpec(id="hog", agent="s", prompt="Fix the crash"),
        TaskSpec(id="low", agent="s", prompt="Fix the crash", priority="background",
                 params={"sleep": 1}),
        TaskSpec(id="waiter", agent="s", prompt="Fix the crash", depends_on=("low",)),
    ]
    seen = await _run_sampling(orch, specs, "low", until=15)  # before aging at 30 s
    assert seen and set(seen) == {3}


class TwoCalls:
    """One long call, and meanwhile one whose prompt is over the task's prompt limit."""

    async def run(self, ctx: AgentContext) -> str:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.llm.complete, [{"role": "user", "content": "hi"}])
            await anyio.sleep(0.5)
            await ctx.llm.complete([{"role": "user", "content": "long prompt " * 200}])
        return "ok"


async def test_r3_4_a_paused_task_gives_back_its_leases(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R3.4 wiring: when a task pauses, the lease of its call still in flight goes back to
    the pool at once (gateway ``on_pause`` → release leases), so another task's call
    starts without waiting for the paused task's call or its decision."""
    provider = PerTaskProvider({"paused": 100})
    agents: dict[str, Callable[[], Any]] = {"two": TwoCalls, "s": Script}
    orch = make_orchestrator(agents, provider=provider, allocator=ONE_SLOT,
                             alerts={"decision_timeout_s": 50})
    await orch.run([
        TaskSpec(id="paused", agent="two", prompt="Fix the crash",
                 budget=Limits(prompt_tokens=300)),
        TaskSpec(id="other", agent="s", prompt="Fix the crash", params={"sleep": 1}),
    ])
    started = dict(provider.started)
    assert started["other"] < 2  # not at 50 s (decision timeout) nor 100 s (call end)


class ShieldedCallLocker(LockingAgent):
    """A locking agent that keeps a model call in flight beside its locks, shielded from
    cancellation (a paid call it does not want to lose)."""

    async def run(self, ctx: AgentContext) -> str:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._call, ctx)
            result = await super().run(ctx)
        return result

    @staticmethod
    async def _call(ctx: AgentContext) -> None:
        with anyio.CancelScope(shield=True):
            await ctx.llm.complete([{"role": "user", "content": "keep me"}], max_tokens=1)


async def test_r5_7_the_resolver_releases_the_victims_leases_itself(tmp_path: Path) -> None:
    """R5.7 wiring: the deadlock resolver gives the victim's leases back at once, without
    relying on the cancelled attempt to unwind (here it cannot: its call is shielded)."""
    orch = make_orch(tmp_path, allocator=ONE_SLOT)
    orch.agents["shielded"] = ShieldedCallLocker
    orch.agents["s"] = Script
    provider = PerTaskProvider({"b": 100})
    orch.gateway.provider = provider
    await orch.run([
        spec("a", locks=["file:x", "file:y"]),
        TaskSpec(id="b", agent="shielded", prompt="Fix the lock order", task_type="bug_fix",
                 complexity="simple", priority="background",
                 params={"locks": ["file:y", "file:x"]}),
        TaskSpec(id="other", agent="s", prompt="Fix the crash", params={"sleep": 5}),
    ])
    victims = [e.task_id for e in orch.bus.history if e.name == "deadlock_victim"]
    assert victims[:1] == ["b"]
    started = [t for task, t in provider.started if task == "other"]
    assert started and 10 <= started[0] < 11  # at the resolution, not when b's call ends


class Patient:
    """Makes one call at 1 s and, beside it, reads its place in the queue at 5 s."""

    seen: list[tuple[int, float]] = []

    async def run(self, ctx: AgentContext) -> str:
        async def look() -> None:
            await anyio.sleep(5)
            self.seen.extend((w.position, w.estimated_wait_s) for w in ctx.waiting())

        async with anyio.create_task_group() as tg:
            tg.start_soon(look)
            await anyio.sleep(1)  # the hog's call goes first
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=1)
        return "ok"


async def test_r5_5_a_waiting_agent_reads_its_queue_position_and_wait(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.5: the waiting agent is told its queue position and estimated wait through its
    context, and a wait over 30 s is logged (``lease_wait_long``)."""
    Patient.seen.clear()
    provider = PerTaskProvider({"hog": 60})
    orch = make_orchestrator({"s": Script, "p": Patient}, provider=provider,
                             allocator=ONE_SLOT)
    await orch.run([
        TaskSpec(id="hog", agent="s", prompt="Fix the crash"),
        TaskSpec(id="patient", agent="p", prompt="Fix the crash"),
    ])
    assert len(Patient.seen) == 1
    position, wait = Patient.seen[0]
    assert position == 1 and wait > 0
    long = [e for e in orch.bus.history if e.name == "lease_wait_long"]
    assert [e.task_id for e in long] == ["patient"]
    assert long[0].data["position"] == 1 and long[0].data["waited_s"] >= 30


async def test_r5_5_short_waits_cost_the_long_wait_reporter_no_snapshot(
    make_orchestrator: OrchestratorFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R5.5: while no request has waited 30 s the reporter looks at the longest wait only:
    no snapshot of every waiter's position (about 1 KiB each, every 5 s), nothing logged."""
    provider = PerTaskProvider({"hog": 20})
    orch = make_orchestrator({"s": Script}, provider=provider, allocator=ONE_SLOT)
    snapshots: list[object] = []
    statistics = Allocator.statistics

    def counted(self: Allocator) -> Any:
        if sys._getframe(1).f_code.co_name == "report_long_waits":  # not status.json's
            snapshots.append(None)
        return statistics(self)

    monkeypatch.setattr(Allocator, "statistics", counted)
    report = await orch.run([TaskSpec(id="hog", agent="s", params={"calls": 1}),
                             TaskSpec(id="next", agent="s", params={"calls": 1})])
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    assert orch.allocator.longest_wait_s() == 0
    assert snapshots == []
    assert not [e for e in orch.bus.history if e.name == "lease_wait_long"]


class _Spawner:
    """Runs ``parent/x`` (one call) twice in the run, forgetting it in between."""

    def __init__(self, orch: list[Orchestrator]) -> None:
        self.orch = orch
        self.held: list[dict[str, bool]] = []

    async def run(self, ctx: AgentContext) -> str:
        orch = self.orch[0]
        # an id PARENT/NAME is serve's (copied past the id check, as group_spec does)
        child = TaskSpec(id="x", agent="script", prompt="a child",
                         budget_span="store").model_copy(update={"id": "parent/x"})
        for _ in range(2):
            handle = await orch.spawn(child)
            await handle.done.wait()
            assert orch.forget("parent/x")
            self.held.append({
                "handles": "parent/x" in orch.handles,
                "tracker": orch.tracker.has_task("parent/x"),
                "allocator": "parent/x" in orch.allocator._holders,
            })
        return "ok"


async def test_r1_2_a_forgotten_task_leaves_every_part_and_runs_again(tmp_path: Path) -> None:
    """#21, R1.2: the run's ``on_forget`` reaches the tracker and the allocator (the
    parts that hold a task by id); a task forgotten once ended runs again under its id,
    from its totals in the store, and the report lists it once with both runs' use."""
    holder: list[Orchestrator] = []
    spawner = _Spawner(holder)
    orch = Orchestrator(
        config_from_dict({"state_dir": str(tmp_path / "state")}),
        provider=ScriptedProvider(), agents={"spawner": lambda: spawner, "script": Script})
    holder.append(orch)
    report = await orch.run([TaskSpec(id="parent", agent="spawner", prompt="spawns")])
    assert spawner.held == [{"handles": False, "tracker": False, "allocator": False}] * 2
    assert report.outcomes["parent/x"].usage.calls == 2
    assert (orch.forgotten, list(orch.handles)) == (2, ["parent"])
