"""R3.3/R3.4/R3.6 through the orchestrator: pause at 100 %, restart, decide from the CLI."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents import AgentContext
from agents.builtin import StepsAgent
from scheduler import Event, Limits, TaskSpec, VibeConfig
from scheduler.cli._decide import stored_status_rows
from scheduler.control._alerts import StatusRow
from scheduler.control._server import control_paths
from scheduler.runtime import Orchestrator, RunReport
from scheduler.store import SqliteStore
from scheduler.tasks import TaskHandle
from scheduler.testing import ScriptedProvider, build_orchestrator, run_virtual

# a SQLite store (worker threads) and the CLI in other processes: real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
CLI = str(Path(sys.executable).parent / "vibe-engine")
WARNING = 0.5  # call 1 (3,500 of _spec's 6,000) passes it


def _orch(state: Path, provider: ScriptedProvider, agents: dict[str, Any] | None = None,
          session: str = "s1", **alerts: Any) -> Orchestrator:
    config = VibeConfig(state_dir=state, store="sqlite", session_id=session,
                        alerts=alerts or {})
    return build_orchestrator(agents or {"coder": StepsAgent}, config=config,
                              provider=provider)


def _spec(tokens: int = 6_000) -> TaskSpec:
    # each call spends 3,500 tokens; the estimate is far lower (the provider counts a
    # 3,000-token prompt whatever is sent; call 2, on the cheaper tier the warning at
    # 50 % (WARNING) moves it to, borrows at most 1.5x the raw count), so call 2 is
    # admitted and crosses 100 %
    return TaskSpec(id="c1", agent="coder", prompt="Fix the crash",
                    params={"steps": 4, "max_tokens": 100}, budget=Limits(tokens=tokens))


async def _until(orch: Orchestrator, name: str, count: int = 1) -> Event:
    """The ``count``-th event called ``name`` (waits for it)."""
    got = [e for e in orch.bus.history if e.name == name]
    ready = anyio.Event()
    if len(got) >= count:
        return got[count - 1]

    def seen(event: Event) -> None:
        if event.name == name:
            got.append(event)
            if len(got) == count:
                ready.set()

    orch.bus.subscribe(seen)
    with anyio.fail_after(30):
        await ready.wait()
    return got[0]


@pytest.mark.slow
async def test_r3_4_pause_restart_decide_from_cli_continue_from_checkpoint(
    tmp_path: Path,
) -> None:
    """R3.4 acceptance: paused at 100 %, orchestrator restarted, CLI adds budget, task resumes."""
    state = tmp_path / "st"
    first = _orch(state, ScriptedProvider(latency_s=0, prompt=3_000, completion=500),
                  warning=WARNING)
    paused: list[Event] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, [_spec()])
        paused.append(await _until(first, "task_paused"))
        tg.cancel_scope.cancel()  # the orchestrator stops while the task waits
    assert paused[0].data["usage"]["tokens"] == 7_000

    provider = ScriptedProvider(latency_s=0, prompt=3_000, completion=500)
    second = _orch(state, provider, warning=WARNING)  # the interrupted session s1, resumed
    report: list[RunReport] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            report.append(await second.run([_spec()]))

        listening = anyio.Event()
        second.bus.subscribe(lambda e: listening.set() if e.name == "control_listening" else None)
        tg.start_soon(run)
        await _until(second, "task_paused")  # still paused after the restart
        with anyio.fail_after(30):
            await listening.wait()
        assert control_paths(state).socket.exists()
        review = await anyio.run_process([CLI, "decide", "c1", "review", "--state-dir",
                                          str(state), "--json"])
        added = await anyio.run_process([CLI, "decide", "c1", "add", "--tokens", "50000",
                                         "--state-dir", str(state)])
    assert json.loads(review.stdout)["summary"]["checkpoint"] == {
        "step": 2, "files": ["step_1.py", "step_2.py"]}
    assert b"sent to the running orchestrator" in added.stdout
    outcome = report[0].outcomes["c1"]
    assert outcome.status == "completed", outcome.reason
    assert len(provider.calls) == 2  # steps 3 and 4 only: continued from the checkpoint
    assert outcome.usage.tokens == 4 * 3_500
    assert (state / "workspace" / "c1" / "step_4.py").exists()
    assert second.tracker.task_scope("c1").limits.tokens == 56_000


async def test_r3_4_finish_decision_ends_the_task_as_finished(tmp_path: Path) -> None:
    orch = _orch(tmp_path / "st", ScriptedProvider(latency_s=0, prompt=3_000, completion=500),
                 warning=WARNING)
    released: list[str] = []

    async def release_leases(handle: TaskHandle) -> None:
        released.append(handle.id)

    orch.gateway.on_pause.connect(release_leases)
    report: list[RunReport] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            report.append(await orch.run([_spec()]))

        tg.start_soon(run)
        await _until(orch, "task_paused")
        assert released == ["c1"]  # a paused task holds no leases
        assert (await orch.decide("c1", "review"))["summary"]["usage"]["calls"] == 2
        await orch.decide("c1", "finish")
    outcome = report[0].outcomes["c1"]
    assert outcome.status == "finished"
    assert "saved and finished (python)" in outcome.reason
    assert outcome.usage.calls == 2


def test_r3_4_unattended_run_finishes_after_the_decision_timeout(tmp_path: Path) -> None:
    """R3.4: with ``alerts.decision_timeout_s`` nobody deciding means save and finish."""

    async def main() -> tuple[RunReport, float]:
        orch = _orch(tmp_path / "st", ScriptedProvider(latency_s=1, prompt=3_000, completion=500),
                     decision_timeout_s=600)
        report = await orch.run([_spec()])
        applied = [e for e in orch.bus.history if e.name == "decision_applied"]
        paused = [e for e in orch.bus.history if e.name == "task_paused"]
        return report, applied[0].at - paused[0].at

    report, waited = run_virtual(main)
    assert report.outcomes["c1"].status == "finished"
    assert "timeout" in report.outcomes["c1"].reason
    assert waited == pytest.approx(600)


@pytest.mark.slow
async def test_r3_status_budget_rows_from_the_store_and_cli(tmp_path: Path) -> None:
    """``vibe-engine status`` shows each task's budget use per dimension with its level."""
    state = tmp_path / "st"
    orch = _orch(state, ScriptedProvider(latency_s=0, prompt=3_000, completion=500),
                 warning=WARNING)
    async with anyio.create_task_group() as tg:
        tg.start_soon(orch.run, [_spec()])
        await _until(orch, "task_paused")
        tg.cancel_scope.cancel()
    store = SqliteStore(state / "vibe.db")
    await store.open()
    try:
        found: list[StatusRow] = await stored_status_rows(store, state)
    finally:
        await store.aclose()
    rows = {r.dimension: r for r in found}
    assert rows["tokens"].used == 7_000 and rows["tokens"].limit == 6_000
    assert rows["tokens"].level == "exceeded" and rows["tokens"].paused
    assert rows["file_edits"].level == "ok"
    env = {**os.environ, "COLUMNS": "200"}
    out = (await anyio.run_process([CLI, "status", "--state-dir", str(state)], env=env)).stdout
    assert b"Budgets" in out and b"exceeded (paused)" in out
    # said once, on the row that paused it (it was on every one of the task's rows)
    assert out.count(b"(paused)") == 1, out.decode()
    assert b"tokens" in next(line for line in out.splitlines() if b"(paused)" in line)
    decided = await anyio.run_process([CLI, "decide", "c1", "finish", "--state-dir", str(state)])
    assert b"stored; applied when the orchestrator starts" in decided.stdout
    refused = await anyio.run_process([CLI, "decide", "zz", "finish", "--state-dir", str(state)],
                                      check=False)
    assert refused.returncode == 2 and b"not paused" in refused.stderr


async def test_r3_3_critical_alert_forces_a_checkpoint_and_cheapest_model(
    tmp_path: Path,
) -> None:
    """R3.3: after a critical crossing the context saves the agent's state; routing goes cheap."""
    saved: list[dict[str, Any]] = []

    class Stepper:
        async def run(self, ctx: AgentContext) -> None:
            state = {"done": 0}
            ctx.checkpoint_source(lambda: dict(state))
            for _ in range(3):
                await ctx.llm.complete([{"role": "user", "content": "go"}], max_tokens=10)
                state["done"] += 1
                saved.append(await ctx.load_checkpoint() or {})

    provider = ScriptedProvider(latency_s=0, prompt=460, completion=0)
    orch = _orch(tmp_path / "st", provider, agents={"s": Stepper})
    spec = TaskSpec(id="s1", agent="s", prompt="Design the architecture",
                    task_type="architecture_design", budget=Limits(tokens=1_000))
    report = await orch.run([spec])
    assert report.outcomes["s1"].status == "completed", report.outcomes["s1"].reason
    # call 2 reaches 920 tokens (critical): a checkpoint is forced right after it
    assert saved[1] == {"done": 1}
    # opus is preferred; aggressive cost reduction skips sonnet and goes to the cheapest tier
    assert [c.model for c in provider.calls] == ["opus", "opus", "haiku"]


async def test_r3_6_file_write_in_flight_uses_the_grace_then_pauses(tmp_path: Path) -> None:
    """R3.6 via the agent context: a model call inside ctx.critical may overdraw once."""
    provider = ScriptedProvider(latency_s=0, prompt=900, completion=0)

    class Writer:
        async def run(self, ctx: AgentContext) -> str:
            async with ctx.critical("file_write"):
                await ctx.llm.complete([{"role": "user", "content": "a"}], max_tokens=200)
                await ctx.llm.complete([{"role": "user", "content": "b"}], max_tokens=200)
                await ctx.files.write("out.txt", "done")
            await ctx.llm.complete([{"role": "user", "content": "c"}], max_tokens=10)
            return "ok"

    orch = _orch(tmp_path / "st", provider, agents={"w": Writer})
    spec = TaskSpec(id="w1", agent="w", prompt="Fix it", budget=Limits(tokens=1_000))
    report: list[RunReport] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            report.append(await orch.run([spec]))

        tg.start_soon(run)
        paused = await _until(orch, "task_paused")
        assert (tmp_path / "st" / "workspace" / "w1" / "out.txt").read_text() == "done"
        await orch.decide("w1", "add_budget", tokens=5_000)
    assert paused.data["usage"]["tokens"] == 1_800
    granted = [e for e in orch.bus.history if e.name == "overdraft_granted"]
    assert len(granted) == 1 and granted[0].data["operation"] == "file_write"
    assert report[0].outcomes["w1"].status == "completed"
    assert report[0].outcomes["w1"].usage.tokens == 2_700


async def test_r3_5_second_overdraft_in_an_operation_pauses_inside_it_then_completes(
    tmp_path: Path,
) -> None:
    """R3.5/R3.6: a denied overdraft pauses the task inside its operation; added budget lets
    the operation finish.  An operation started while a pause was pending gets no grace."""
    provider = ScriptedProvider(latency_s=0, prompt=900, completion=0)
    order: list[str] = []

    class Committer:
        async def run(self, ctx: AgentContext) -> str:
            async with ctx.critical("git_commit"):
                for name in ("a", "b", "c"):  # a crosses 100 %, b overdraws, c is denied
                    await ctx.llm.complete([{"role": "user", "content": name}], max_tokens=200)
                    order.append(name)
                await ctx.files.write("commit.txt", "abc")
            async with ctx.critical("file_write"):  # a pause is pending: not in progress
                order.append("second operation")
                await ctx.llm.complete([{"role": "user", "content": "d"}], max_tokens=200)
                order.append("d")
            return "ok"

    orch = _orch(tmp_path / "st", provider, agents={"g": Committer})
    spec = TaskSpec(id="g1", agent="g", prompt="Fix it", budget=Limits(tokens=800))
    report: list[RunReport] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            report.append(await orch.run([spec]))

        tg.start_soon(run)
        await _until(orch, "task_paused")
        assert order == ["a", "b"] and "g1" in orch.controller.statistics().in_critical
        await orch.decide("g1", "add_budget", tokens=1_500)  # c fits, then crosses 100 % again
        await _until(orch, "task_paused", count=2)
        assert order == ["a", "b", "c", "second operation"]
        assert (tmp_path / "st" / "workspace" / "g1" / "commit.txt").read_text() == "abc"
        await orch.decide("g1", "finish")
    overdrafts = [e for e in orch.bus.history if e.name.startswith("overdraft_")]
    # b overdraws, c is denied (grace used); after the budget was added c, now estimated
    # higher by the calibrated counter, gets the new period's grace; d gets none
    assert [e.name for e in overdrafts] == [
        "overdraft_granted", "overdraft_denied", "overdraft_granted"]
    assert [e.data.get("operation") for e in overdrafts] == ["git_commit"] * 3
    assert "already used" in overdrafts[1].message
    assert report[0].outcomes["g1"].status == "finished"
    assert report[0].outcomes["g1"].usage.tokens == 2_700
