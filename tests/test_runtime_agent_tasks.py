"""The run's agent tasks on asyncio (R7.1): plain asyncio tasks in the orchestrator's own
task group, cancelled through anyio cancel scopes so shielded clean-up still runs; the
task's wall-time budget is a deadline on the attempt's own cancel scope (R1.1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Limits, TaskSpec
from scheduler.runtime import AgentContext
from scheduler.runtime._spawn import task_group
from scheduler.tasks import TaskStatus
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.real_asyncio  # asyncio's own tasks are what is tested


class Sleeper:
    """Waits without ever calling a model."""

    async def run(self, ctx: AgentContext) -> str:
        await anyio.sleep_forever()
        return ""


async def test_r1_1_a_task_past_its_wall_time_fails_on_asyncio(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.1: on asyncio too, the time budget ends an attempt that never calls a model:
    the task fails naming ``time_s`` and the run goes on to end."""
    orch = make_orchestrator({"sleeper": Sleeper})
    report = await orch.run([TaskSpec(id="t", agent="sleeper", budget=Limits(time_s=0.2))])
    outcome = report.outcomes["t"]
    assert outcome.status == "failed" and "time_s" in outcome.reason
    assert [e.name for e in orch.bus.history if e.name == "task_time_exceeded"]


async def test_r7_1_a_cancelled_run_ends_every_waiting_agent_with_its_clean_up(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R7.1: cancelling a run while its agents wait cancels every agent task, and each
    task's shielded end still runs in full: recorded as interrupted, its waits gone."""
    orch = make_orchestrator({"sleeper": Sleeper})
    specs = [TaskSpec(id=f"t{i}", agent="sleeper") for i in range(20)]
    with anyio.move_on_after(0.3):
        await orch.run(specs)
    handles = [orch.handles[s.id] for s in specs]
    assert {h.status for h in handles} == {TaskStatus.INTERRUPTED}
    assert all(h.done.is_set() for h in handles)  # _finish ran to its last line


class AbortedOnce:
    """Waits in its first attempt until aborted; the second returns its attempt number."""

    running: anyio.Event

    async def run(self, ctx: AgentContext) -> int:
        if ctx.attempt == 1:
            AbortedOnce.running.set()
            await anyio.sleep_forever()
        return ctx.attempt


async def test_r5_7_an_aborted_agent_is_requeued_in_a_task_of_its_own_on_asyncio(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.7: a deadlock victim's attempt ends through its task's one cancel scope; the
    requeued attempt runs (in a new task: the old scope stays cancelled) and completes,
    its attempt count kept; a second victim whose requeues are used up fails."""
    AbortedOnce.running = anyio.Event()
    orch = make_orchestrator({"a": AbortedOnce})

    async def abort_soon() -> None:
        await AbortedOnce.running.wait()
        assert orch.handles["v"].cancel_scope is not None
        assert orch.abort("v", "test abort")

    async with anyio.create_task_group() as tg:
        tg.start_soon(abort_soon)
        report = await orch.run([TaskSpec(id="v", agent="a")])
    assert report.outcomes["v"].status == "completed"
    assert report.outcomes["v"].attempts == 2
    assert orch.handles["v"].result == 2
    assert [e.name for e in orch.bus.history].count("task_requeued") == 1


async def test_r5_7_an_aborted_agent_not_requeued_fails_on_asyncio(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.7: an abort without requeue fails the task once its clean-up ran."""
    AbortedOnce.running = anyio.Event()
    orch = make_orchestrator({"a": AbortedOnce})

    async def abort_soon() -> None:
        await AbortedOnce.running.wait()
        assert orch.abort("v", "victim", requeue=False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(abort_soon)
        report = await orch.run([TaskSpec(id="v", agent="a")])
    assert report.outcomes["v"].status == "failed"
    assert orch.handles["v"].done.is_set()


async def test_r7_1_an_error_in_a_task_cancels_the_others_after_their_clean_up() -> None:
    """R7.1: the task group raises a task's error once every other task has been
    cancelled and has run its shielded clean-up, as an anyio task group does."""
    cleaned: list[int] = []
    started = anyio.Event()

    async def waits(i: int) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # a clean-up that awaits
                cleaned.append(i)

    async def fails() -> None:
        await started.wait()
        raise ValueError("boom")

    with pytest.raises(ExceptionGroup) as raised:
        async with task_group() as tg:
            for i in range(3):
                tg.start_soon(waits, i)
            tg.start_soon(fails)
            started.set()
    assert [type(e) for e in raised.value.exceptions] == [ValueError]
    assert sorted(cleaned) == [0, 1, 2]


async def test_r7_1_cancelling_the_group_cancels_its_tasks_and_later_ones() -> None:
    """R7.1: a task group cancelled from outside cancels its tasks (their shields hold) and
    waits for them; tasks they start meanwhile are cancelled too."""
    log: list[Any] = []

    async def child(depth: int) -> None:
        try:
            if depth:
                tg.start_soon(child, depth - 1)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
                log.append(depth)

    with anyio.move_on_after(0.1) as scope:
        async with task_group() as tg:
            tg.start_soon(child, 2)
    assert scope.cancelled_caught
    assert sorted(log) == [0, 1, 2]


def test_r7_1_task_specs_share_the_set_of_fields_they_were_given() -> None:
    """R7.1: many tasks given the same fields share one set of those names (a run of
    thousands holds a handful); a copy with changes gets its own, the others keep theirs."""
    a, b = (TaskSpec(id=i, agent="x", prompt="p") for i in "ab")
    assert a.model_fields_set is b.model_fields_set
    c = a.model_copy(update={"priority": "background"})
    assert c.model_fields_set == {"id", "agent", "prompt", "priority"}
    assert a.model_fields_set == b.model_fields_set == {"id", "agent", "prompt"}
    assert TaskSpec(id="d", agent="x").model_fields_set == {"id", "agent"}


def test_r7_1_agents_waiting_for_a_lease_hold_little_memory(tmp_path: Any) -> None:
    """R7.1: hundreds of agents waiting for their turn (a pool of 2 calls) hold under
    10.5 KiB of Python memory each at the run's peak, their task specs included
    (tracemalloc's peak above the memory before the config is built; not a timing).
    Measured in a fresh interpreter, as a ``vibe-engine run`` is: see tests/_memory_probe."""
    probe = subprocess.run([sys.executable, "-m", "tests._memory_probe", "400", str(tmp_path)],
                           capture_output=True, text=True, timeout=110, check=False,
                           cwd=Path(__file__).resolve().parents[1])
    assert probe.returncode == 0, probe.stderr[-2000:]
    # 8.7-9.8 KiB on a loaded 2-core machine (a waiting call's frames: the agent's, the
    # gateway's two and the allocator's; its request made once leased); 10.8-11.0 with
    # the frames of ctx.llm, the lease step and the gateway's routing kept while it waited
    assert float(probe.stdout) < 10.5 * 1024


class Returns:
    async def run(self, ctx: AgentContext) -> int:
        await anyio.sleep(1)
        return 1


class CleanUpRaises:
    """Aborted, it ends in a group of the abort's cancellation and an error of its own, as
    an agent's task group (a nursery, ``except*``) does when one of its tasks got a
    ``finish`` decision, or raised in its clean-up, while the abort cancelled another."""

    running: anyio.Event

    async def run(self, ctx: AgentContext) -> int:
        if ctx.attempt == 1:
            CleanUpRaises.running.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class() as cancel:
                raise BaseExceptionGroup("the agent's tasks",
                                         [RuntimeError("clean-up failed"), cancel]) from None
        return ctx.attempt


@pytest.mark.parametrize("requeue", [True, False])
async def test_r5_7_an_abort_whose_agent_tasks_raise_beside_the_cancel_ends_only_that_attempt(
    make_orchestrator: OrchestratorFactory, requeue: bool,
) -> None:
    """R5.7: an aborted agent whose own task group ends in a group of the abort's
    cancellation and another error is an aborted attempt (requeued, or failed), and the
    run goes on; before, the group (not a cancellation, not an Exception) ended the run."""
    CleanUpRaises.running = anyio.Event()
    orch = make_orchestrator({"a": CleanUpRaises, "b": Returns})

    async def abort_soon() -> None:
        await CleanUpRaises.running.wait()
        assert orch.abort("v", "victim", requeue=requeue)

    async with anyio.create_task_group() as tg:
        tg.start_soon(abort_soon)
        report = await orch.run([TaskSpec(id="v", agent="a"), TaskSpec(id="w", agent="b")])
    assert report.outcomes["v"].status == ("completed" if requeue else "failed")
    assert report.outcomes["w"].status == "completed"
