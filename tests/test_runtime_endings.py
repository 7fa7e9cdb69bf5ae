"""R7.1: tasks ending together record their ends a bounded number at a time, and every
end is recorded (before the run reports), also when recording one of them fails."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from scheduler import TaskSpec, Usage, VibeConfig
from scheduler.budget import resolve_task
from scheduler.runtime import AgentContext
from scheduler.runtime._ending import Endings
from scheduler.tasks import TaskHandle
from scheduler.testing import InstantProvider, build_orchestrator


def _handle(task_id: str) -> TaskHandle:
    spec = TaskSpec(id=task_id, agent="a")
    return TaskHandle(spec, resolve_task(spec, VibeConfig()))


async def test_r7_1_ends_are_recorded_at_most_limit_at_once() -> None:
    running, most, recorded = 0, 0, []

    async def record(handle: TaskHandle) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.01)
        recorded.append(handle.id)
        running -= 1

    endings = Endings(record, limit=3)
    returned = []

    async def end(i: int) -> None:
        await endings.record(_handle(f"t{i}"))
        returned.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(end, i)
    assert sorted(recorded) == sorted(f"t{i}" for i in range(10))
    assert most == 3 and endings.queued == 0
    assert len(returned) == 10


async def test_r7_1_a_failed_end_does_not_keep_queued_ends_from_being_recorded() -> None:
    recorded = []

    async def record(handle: TaskHandle) -> None:
        await anyio.sleep(0.01)
        if handle.id == "t1":
            raise RuntimeError("store down")
        recorded.append(handle.id)

    endings = Endings(record, limit=1)
    errors: list[BaseException] = []

    async def end(i: int) -> None:
        try:
            await endings.record(_handle(f"t{i}"))
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(end, i)
    assert sorted(recorded) == ["t0", "t2", "t3", "t4"]
    assert [str(e) for e in errors] == ["store down"]


class TwoCalls:
    async def run(self, ctx: AgentContext) -> str:
        for _ in range(2):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=16)
        return "ok"


@pytest.mark.real_asyncio  # worker-thread file writes, as in a real run
async def test_r7_1_tasks_ending_together_all_have_their_files(tmp_path: Path) -> None:
    """Many tasks ending at once (more than record their ends together): each ends
    completed with its usage.json and result.json written when the run reports."""
    orch = build_orchestrator({"a": TwoCalls}, state_dir=tmp_path,
                              provider=InstantProvider(Usage(20, 5)))
    n = 3 * orch._endings.limit
    report = await orch.run([TaskSpec(id=f"t{i}", agent="a") for i in range(n)])
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    for i in range(n):
        folder = tmp_path / "tasks" / f"t{i}"
        assert (folder / "usage.json").is_file() and (folder / "result.json").is_file()
    assert all(h.done.is_set() for h in orch.handles.values())
