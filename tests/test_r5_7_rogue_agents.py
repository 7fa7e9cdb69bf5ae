"""R5.7, R1.1: an agent that swallows its cancellation does not hold the run.

A plugin agent that catches ``CancelledError`` (or ``BaseException``) around its awaits
and goes on -- retries, sleeps again, shields its awaits -- kept its task's leases and
locks, left its task unrecorded and the run waiting for it for ever: a deadlock victim
(R5.7) or a task past its wall-time budget (R1.1) was never taken back.  The runtime
takes the task's leases and locks back when it ends the attempt, refuses the agent's
model calls from then on, and ``grace_s`` later records the task's end with one warning
naming it and stops waiting for it.

On virtual time (trio) the agent here shields its awaits once cancelled (trio
re-delivers a cancellation at every await, so swallowing it unshielded only spins);
anyio's task group on trio still waits for it to return, an hour on: the task's end is
recorded at the grace period's end all the same.  On asyncio the run ends without it
(``tests/test_r7_1_rogue_agents_cli.py``).
"""

from __future__ import annotations

import anyio
import structlog

from scheduler import TaskSpec
from scheduler.runtime import AgentContext
from scheduler.runtime._stragglers import GRACE_S
from scheduler.tasks import TaskStatus
from tests._helpers import OrchestratorFactory

_HOUR = 3600.0


class _Rogue:
    """Holds a lock and a model call's worth of budget; once cancelled it tries another
    call, then shields itself and waits an hour before it returns."""

    started: anyio.Event
    refused: list[str]
    cancelled_at: list[float]

    async def run(self, ctx: AgentContext) -> str:
        if ctx.attempt > 1:
            return "requeued"  # before the fix: the victim's next attempt
        await ctx.llm.complete([{"role": "user", "content": "What is a lease?"}], max_tokens=50)
        await ctx.locks.acquire("shared.txt")
        _Rogue.started.set()
        try:
            await anyio.sleep_forever()
        except BaseException:  # the misbehaviour under test
            _Rogue.cancelled_at.append(anyio.current_time())
            with anyio.CancelScope(shield=True):
                try:
                    await ctx.llm.complete([{"role": "user", "content": "again"}],
                                           max_tokens=50)
                except Exception as exc:
                    _Rogue.refused.append(type(exc).__name__)
                await anyio.sleep(_HOUR)
        return "late"


class _Waiter:
    """Takes the rogue's lock once it is free; returns when it got it."""

    async def run(self, ctx: AgentContext) -> float:
        await _Rogue.started.wait()
        await ctx.locks.acquire("shared.txt")
        return anyio.current_time()


def _reset() -> None:
    _Rogue.started = anyio.Event()
    _Rogue.refused, _Rogue.cancelled_at = [], []


async def test_r5_7_an_aborted_agent_that_ignores_it_is_given_up_after_the_grace_period(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.7: a victim aborted at t0 that swallows the abort: its lock is free at t0 (the
    waiting task gets it then), its next model call is refused and not charged, and at
    t0 + grace its task ends failed (not requeued: its agent still runs) with one warning
    naming it -- not an hour later when the agent returns."""
    _reset()
    orch = make_orchestrator({"rogue": _Rogue, "waiter": _Waiter})
    aborted: list[float] = []

    async def abort_when_started() -> None:
        await _Rogue.started.wait()
        await anyio.sleep(1)
        aborted.append(anyio.current_time())
        assert orch.abort("r", "agent r yielded due to deadlock")

    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(abort_when_started)
            report = await orch.run([TaskSpec(id="r", agent="rogue", prompt="x"),
                                     TaskSpec(id="w", agent="waiter", prompt="y")])
    (t0,) = aborted
    rogue = orch.handles["r"]
    assert rogue.status is TaskStatus.FAILED
    assert "did not stop" in rogue.reason and "deadlock" in rogue.reason
    assert rogue.finished_at == t0 + GRACE_S  # before: never (the run waited for ever)
    assert orch.handles["w"].result == t0  # the lock came back with the abort
    assert _Rogue.refused == ["TaskAbortedError"]
    assert report.outcomes["r"].usage.calls == 1  # the refused call spent nothing
    assert report.outcomes["r"].attempts == 1
    warned = [e for e in logs if e["event"] == "agent_ignored_cancellation"]
    assert len(warned) == 1 and warned[0]["task_id"] == "r"
    assert orch.allocator.statistics().leases == 0


async def test_r1_1_an_agent_past_its_time_budget_that_goes_on_is_given_up(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.1: a task whose wall-time budget ran out while its agent swallows the
    cancellation: its lock is free when the budget ends, its end is recorded (failed,
    naming the time budget) a grace period later, once, and the run reports it."""
    _reset()
    orch = make_orchestrator({"rogue": _Rogue, "waiter": _Waiter})
    with structlog.testing.capture_logs() as logs:
        report = await orch.run([TaskSpec(id="r", agent="rogue", prompt="x",
                                          budget={"time_s": 30}),
                                 TaskSpec(id="w", agent="waiter", prompt="y")])
    (cut,) = _Rogue.cancelled_at
    rogue = orch.handles["r"]
    assert rogue.status is TaskStatus.FAILED and "wall-time budget" in rogue.reason
    assert rogue.finished_at == cut + GRACE_S
    assert orch.handles["w"].result == cut
    assert report.outcomes["r"].status == "failed"
    events = [e.name for e in orch.bus.history if e.task_id == "r"]
    assert events.count("task_failed") == 1  # the agent's late return records nothing
    assert [e["task_id"] for e in logs if e["event"] == "agent_ignored_cancellation"] == ["r"]


class _GoesOnAfterFinish:
    """Calls until its budget pauses it; told to finish, it swallows that and waits."""

    async def run(self, ctx: AgentContext) -> str:
        try:
            for _ in range(20):
                await ctx.llm.complete([{"role": "user", "content": "go on"}], max_tokens=500)
        except Exception:  # the FinishRequestedError that should unwind it
            await anyio.sleep(_HOUR)
        return "late"


async def test_r3_4_an_agent_that_goes_on_after_a_finish_decision_is_given_up(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R3.4: ``finish`` decided at t0 for a paused task whose agent swallows it: the task
    ends finished at t0 + grace with one warning (before: completed an hour later)."""
    orch = make_orchestrator({"a": _GoesOnAfterFinish})
    decided: list[float] = []

    async def finish_when_paused() -> None:
        while not any(e.name == "task_paused" for e in orch.bus.history):  # noqa: ASYNC110
            await anyio.sleep(1)  # the bus keeps a history, signals nothing here
        decided.append(anyio.current_time())
        await orch.decide("f", "finish")

    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(finish_when_paused)
            report = await orch.run([TaskSpec(id="f", agent="a", prompt="x",
                                              budget={"tokens": 1500})])
    (t0,) = decided
    task = orch.handles["f"]
    assert report.outcomes["f"].status == "finished", report.outcomes["f"]
    assert "did not stop" in task.reason
    assert task.finished_at == t0 + GRACE_S
    assert [e["task_id"] for e in logs if e["event"] == "agent_ignored_cancellation"] == ["f"]
