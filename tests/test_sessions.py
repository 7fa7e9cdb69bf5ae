"""Sessions through the Python API: a new run starts fresh, a known session id continues,
an agent's result is kept, one orchestrator per state directory (issue #18, R1.5, R2.6)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents import AgentContext
from scheduler import TaskSpec
from scheduler.core import SessionError
from scheduler.runtime import Orchestrator, RunReport
from scheduler.store import MemoryStore, Store, list_sessions, session_task_totals
from scheduler.testing import ScriptedProvider, build_orchestrator

pytestmark = pytest.mark.anyio


class _Stepper:
    """A coder without files or shell: one model call and one checkpoint per step."""

    async def run(self, ctx: AgentContext) -> dict[str, Any]:
        state = await ctx.load_checkpoint() or {"step": 0}
        while state["step"] < int(ctx.task.params["steps"]):
            await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}],
                                   max_tokens=100)
            state["step"] += 1
            await ctx.checkpoint(state)
        return state


def _orch(state: Path, store: Store, session: str, agents: dict[str, Any] | None = None,
          provider: ScriptedProvider | None = None) -> Orchestrator:
    return build_orchestrator(agents or {"coder": _Stepper}, state_dir=state, store=store,
                              session_id=session,
                              provider=provider or ScriptedProvider(latency_s=1))


def _coder(task_id: str = "fix", steps: int = 2) -> TaskSpec:
    return TaskSpec(id=task_id, agent="coder", prompt="Fix the off-by-one error",
                    params={"steps": steps, "max_tokens": 100})


async def test_r1_5_a_new_session_starts_fresh_task_state_and_the_day_accumulates(
    tmp_path: Path,
) -> None:
    """Issue #18: re-running the same task ids in a new session neither resumes from the
    old checkpoints nor adds the old usage to the new task rows; the day keeps both."""
    store = MemoryStore()
    first_provider, second_provider = ScriptedProvider(latency_s=1), ScriptedProvider(latency_s=1)
    first = await _orch(tmp_path, store, "s1", provider=first_provider).run([_coder()])
    second = await _orch(tmp_path, store, "s2", provider=second_provider).run([_coder()])

    assert len(first_provider.calls) == len(second_provider.calls) == 2  # no silent resume
    one, two = first.outcomes["fix"], second.outcomes["fix"]
    assert two.status == "completed" and two.usage.calls == 2
    assert two.usage.tokens == one.usage.tokens == 300
    assert second.total.tokens == 300
    assert (await store.totals("day:2026-11-27")).tokens == 600  # R1.5: the day accumulates
    assert (await session_task_totals(store, "s2", "fix")).calls == 2
    assert {r.session_id: r.state for r in await list_sessions(store)} == {
        "s1": "completed", "s2": "completed"}


class _Answer:
    def __init__(self, result: Any) -> None:
        self.result = result

    async def run(self, ctx: AgentContext) -> Any:
        await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}], max_tokens=50)
        return self.result


async def test_an_agents_result_is_kept_with_its_task(tmp_path: Path) -> None:
    """Issue #18: what ``run()`` returns is in the report, the store and result.json."""
    store = MemoryStore()
    answer = {"answer": 42, "files": ["a.py"]}
    orch = _orch(tmp_path, store, "s1", agents={"qa": lambda: _Answer(answer)})
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What is it?")])

    assert report.outcomes["q"].result == answer
    assert (await store.get_state("task", "s1/q"))["result"] == answer  # type: ignore[index]
    doc = json.loads((tmp_path / "tasks" / "q" / "result.json").read_text("utf-8"))
    assert doc == {"task_id": "q", "session_id": "s1", "result": answer}


@pytest.mark.parametrize(("result", "reason"), [
    ({1, 2}, "not JSON-serialisable"),
    ("x" * 300_000, "over the 262,144-byte cap"),
])
async def test_a_result_that_cannot_be_kept_fails_the_task_clearly(
    tmp_path: Path, result: Any, reason: str,
) -> None:
    orch = _orch(tmp_path, MemoryStore(), "s1", agents={"qa": lambda: _Answer(result)})
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What is it?")])
    outcome = report.outcomes["q"]
    assert outcome.status == "failed" and outcome.result is None
    assert outcome.reason.startswith("task q: result not kept: ") and reason in outcome.reason


async def _run_until_checkpoint(orch: Orchestrator, specs: list[TaskSpec], task: str,
                                step: int) -> None:
    """Run ``specs`` and cancel the run once ``task`` checkpointed ``step`` (an interrupt)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(orch.run, specs)
        key = f"{orch.session_id}/{task}"
        # a checkpoint emits no event: poll the store (virtual time, so exact and instant)
        while ((await orch.store.get_state("checkpoint", key)) or {}).get("step", 0) < step:  # noqa: ASYNC110
            await anyio.sleep(0.5)
        tg.cancel_scope.cancel()


async def test_a_known_session_id_continues_the_interrupted_session(tmp_path: Path) -> None:
    """Issue #18 (resume): ended tasks are skipped and keep their results; an interrupted
    task continues from its checkpoint and its usage so far."""
    store = MemoryStore()
    after = _coder("after", steps=1).model_copy(update={"depends_on": ["long"]})
    specs = [_coder("quick", steps=1), _coder("long", steps=5), after]
    await _run_until_checkpoint(_orch(tmp_path, store, "s1"), specs, "long", 2)
    assert (await store.get_state("session", "s1"))["state"] == "interrupted"  # type: ignore[index]
    records = {k: v["status"] for k, v in (await store.list_state("task")).items()}
    assert records == {"s1/quick": "completed", "s1/long": "interrupted",
                       "s1/after": "pending"}

    provider = ScriptedProvider(latency_s=1)
    report: RunReport = await _orch(tmp_path, store, "s1", provider=provider).run(specs)
    assert len(provider.calls) == 3 + 1  # long's steps 3-5 and after; quick not run again
    assert report.outcomes["after"].status == "completed"
    quick, long = report.outcomes["quick"], report.outcomes["long"]
    assert quick.status == "completed" and quick.result == {"step": 1}
    assert quick.usage.calls == 1
    # the session's whole use: steps 1-5 answered, and the step-3 call the interrupt cut
    # off once it went out, charged at its estimate (R2.1)
    assert long.status == "completed" and long.usage.calls == 6
    cut = [e for e in await store.events(task_id="long") if e.event_id.endswith(":estimate")]
    assert len(cut) == 1
    assert (await store.get_state("session", "s1"))["state"] == "completed"  # type: ignore[index]


async def test_one_orchestrator_per_state_directory(tmp_path: Path) -> None:
    """Issue #18: a second orchestrator on a state directory in use refuses to start,
    naming the directory and the running process; the first one runs on."""
    first = _orch(tmp_path, MemoryStore(), "s1")
    second = _orch(tmp_path, MemoryStore(), "s2")
    reports: list[RunReport] = []

    async def run_first() -> None:
        reports.append(await first.run([_coder(steps=3)]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_first)
        await anyio.sleep(0.5)
        with pytest.raises(SessionError) as err:
            await second.run([_coder("other")])
    assert str(tmp_path) in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    assert err.value.pid == os.getpid()
    assert reports[0].outcomes["fix"].status == "completed"
    # once the first has ended the directory is free again
    assert (await second.run([_coder("other")])).outcomes["other"].status == "completed"


async def test_r7_1_the_ended_session_record_holds_the_whole_config(tmp_path: Path) -> None:
    """R7.1: the session record written when the run ends holds the run's config with
    every task, as at its start (the run keeps it compressed meanwhile, not as dicts)."""
    store = MemoryStore()
    specs = [_coder(f"t{i}", steps=1).model_dump() for i in range(3)]
    orch = build_orchestrator({"coder": _Stepper}, state_dir=tmp_path, store=store,
                              session_id="s1", tasks=specs,
                              provider=ScriptedProvider(latency_s=1))
    await orch.run()
    record: Any = await store.get_state("session", "s1")
    assert record["state"] == "completed"
    assert record["config"] == json.loads(json.dumps(orch.config.model_dump(mode="json")))
    assert [t["id"] for t in record["config"]["tasks"]] == ["t0", "t1", "t2"]
