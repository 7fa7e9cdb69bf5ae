"""Every paid token recorded (R2.1, R5.4, R2.6): calls whose lease ended, bad arguments.

Each case runs through ``Orchestrator.run`` on virtual time: an agent makes the
calls, and the store is asked afterwards what was charged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Completion, CompletionRequest, Limits, TaskSpec, Usage
from scheduler.core import FinishRequestedError, InvalidArgumentError
from scheduler.runtime import AgentContext
from scheduler.tasks import TaskStatus
from tests._helpers import OrchestratorFactory

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]


class LatencyProvider:
    """Answers 100 + 50 tokens after the next latency of ``latencies`` (the last repeats);
    records when each call returned."""

    def __init__(self, *latencies: float) -> None:
        self.latencies = list(latencies)
        self.returned: list[float] = []
        self.reported: list[Usage] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        latency = self.latencies.pop(0) if len(self.latencies) > 1 else self.latencies[0]
        await anyio.sleep(latency)
        self.returned.append(anyio.current_time())
        usage = Usage(100, 50)
        self.reported.append(usage)
        return Completion("ok", usage, request.model)

    async def aclose(self) -> None:
        return None


class OneCall:
    async def run(self, ctx: AgentContext) -> str:
        return (await ctx.llm.complete(HI, max_tokens=400, model="sonnet")).text


class CallThenOverBudget:
    """A slow call in flight while a second call of the same task crosses the budget on its
    own (one refused only for what the first holds would wait for it instead)."""

    async def run(self, ctx: AgentContext) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: ctx.llm.complete(HI, max_tokens=400, model="sonnet"))
            await anyio.sleep(1)
            with pytest.raises(FinishRequestedError):  # paused over budget, then finished
                await ctx.llm.complete(HI, max_tokens=600, model="sonnet")


async def test_r2_1_call_in_flight_when_its_task_pauses_is_charged(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.1/R3.4: the pause gives back the task's leases while a call is in flight; the
    call's usage is still charged when it returns."""
    provider = LatencyProvider(5.0, 0.1)
    orch = make_orchestrator({"a": CallThenOverBudget}, provider=provider)
    spec = TaskSpec(id="t1", agent="a", prompt="x", budget=Limits(tokens=600))

    async def finish_later() -> None:
        await anyio.sleep(10)
        await orch.decide("t1", "finish")

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_later)
        report = await orch.run([spec])
    paused = next(e for e in orch.bus.history if e.name == "task_paused")
    assert paused.at < provider.returned[0]  # the pause came while the call was in flight
    assert report.outcomes["t1"].status is TaskStatus.COMPLETED
    assert (await orch.store.totals("task:t1")).tokens == 150
    assert [e.usage for e in await orch.store.events(task_id="t1")] == [Usage(100, 50)]


async def test_r5_4_call_longer_than_the_lease_ttl_keeps_its_lease_and_is_charged(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.4 "unless renewed": a 2.5 s call with ``lease_ttl_s = 1`` renews its lease while
    it runs (no expiry), and its usage is charged."""
    orch = make_orchestrator({"a": OneCall}, provider=LatencyProvider(2.5),
                             allocator={"lease_ttl_s": 1})
    report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status is TaskStatus.COMPLETED
    assert [e for e in orch.bus.history if e.name == "lease_expired"] == []
    assert (await orch.store.totals("task:t1")).tokens == 150
    assert orch.allocator.statistics().leases == 0  # settled, not expired


async def test_r2_1_expired_lease_still_charges_the_call(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.1: a lease that expired anyway (here nothing renews it) never loses the call's
    usage: it is charged, and settling the ended lease is not an error."""
    orch = make_orchestrator({"a": OneCall}, provider=LatencyProvider(2.5),
                             allocator={"lease_ttl_s": 1})
    orch.services.remove(orch.gateway.admission.keep_leases)
    report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert [e.name for e in orch.bus.history if e.name == "lease_expired"] == ["lease_expired"]
    assert report.outcomes["t1"].status is TaskStatus.COMPLETED
    assert (await orch.store.totals("task:t1")).tokens == 150


BAD_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "100"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"tools": [1]}, "tools[0]"),
    ({"tools": None}, "tools"),
    ({"system": None}, "system"),
    ({"context": 3}, "context"),
    ({"model": "gpt-5"}, "model"),
    ({"hints": ["x"]}, "hints"),
]


class BadCalls:
    """Calls with each bad argument; keeps the errors it caught as ``ValueError``."""

    caught: list[ValueError] = []

    async def run(self, ctx: AgentContext) -> None:
        for change, _ in BAD_ARGUMENTS:
            kw: dict[str, Any] = {"messages": HI, "max_tokens": 100, **change}
            try:
                await ctx.llm.complete(kw.pop("messages"), **kw)
            except ValueError as exc:
                BadCalls.caught.append(exc)


async def test_r2_2_bad_call_arguments_raise_a_value_error_naming_the_argument(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.2: ``max_tokens=None`` or negative, messages that are not a list of dicts … raise
    a ``ValueError`` (InvalidArgumentError) naming the argument, before anything is
    reserved or charged."""
    BadCalls.caught = []
    provider = LatencyProvider(0.1)
    orch = make_orchestrator({"a": BadCalls}, provider=provider)
    report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status is TaskStatus.COMPLETED
    assert [type(e) for e in BadCalls.caught] == [InvalidArgumentError] * len(BAD_ARGUMENTS)
    names = [e.argument for e in BadCalls.caught]  # type: ignore[attr-defined]
    assert names == [name for _, name in BAD_ARGUMENTS]
    assert all(name in str(e) for e, (_, name) in zip(BadCalls.caught, BAD_ARGUMENTS,
                                                         strict=True))
    assert provider.reported == []
    assert (await orch.store.totals("task:t1")).tokens == 0


class NoneMaxTokens:
    async def run(self, ctx: AgentContext) -> None:
        await ctx.llm.complete(HI, max_tokens=None)  # type: ignore[arg-type]


async def test_r2_2_max_tokens_none_fails_the_task_with_a_clear_reason(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.2: uncaught, the error fails only that task, with one clear reason."""
    orch = make_orchestrator({"a": NoneMaxTokens, "ok": OneCall}, provider=LatencyProvider(0.1))
    report = await orch.run([TaskSpec(id="bad", agent="a", prompt="x"),
                             TaskSpec(id="good", agent="ok", prompt="x")])
    assert report.outcomes["bad"].status is TaskStatus.FAILED
    assert "invalid max_tokens=None" in report.outcomes["bad"].reason
    assert report.outcomes["good"].status is TaskStatus.COMPLETED


def test_r2_1_simulated_provider_cannot_produce_negative_tokens(tmp_path: Path) -> None:
    """R2.1: a negative output setting of the simulated provider is refused at start: one
    line naming the field, exit 2, nothing written."""
    cfg = tmp_path / "neg.toml"
    cfg.write_text('state_dir = "st"\n[provider.simulated]\noutput_tokens = [-50, -10]\n'
                   '[[tasks]]\nid = "t1"\nagent = "coder"\nprompt = "x"\n')
    out = subprocess.run(
        [str(Path(sys.executable).parent / "vibe-engine"), "run", str(cfg), "--no-live"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "provider.simulated.output_tokens" in lines[0]
    assert not (tmp_path / "st").exists()


class CallsAndEdits:
    """Five model calls and two file edits."""

    async def run(self, ctx: AgentContext) -> None:
        for i in range(5):
            await ctx.llm.complete(HI, max_tokens=100, model="haiku")
            if i % 2:
                await ctx.files.write(f"out{i}.txt", "x")


@pytest.mark.real_asyncio  # a real SQLite file locked by another connection, real time
async def test_r2_6_sqlite_locked_by_another_connection_loses_no_event(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: while another connection holds the database's write lock for several seconds,
    no task fails and every event lands (retried, then spooled and replayed)."""
    import sqlite3

    import structlog.testing

    from scheduler.store import SqliteStore
    from scheduler.testing import ScriptedProvider

    db = tmp_path / "vibe.db"
    first = SqliteStore(db)
    await first.open()
    await first.aclose()
    orch = make_orchestrator({"a": CallsAndEdits}, store=SqliteStore(db),
                             provider=ScriptedProvider(latency_s=0.05))
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, held for 6 s of the run (longer
    # than the 5 s busy timeout a blocking store would wait before failing the write)

    async def unlock_later() -> None:
        await anyio.sleep(6)
        other.execute("COMMIT")

    specs = [TaskSpec(id=f"t{i}", agent="a", prompt="x") for i in range(3)]
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(unlock_later)
            report = await orch.run(specs)
    other.close()
    assert {o.status for o in report.outcomes.values()} == {TaskStatus.COMPLETED}
    assert any(entry["event"] == "sqlite_write_spooled" for entry in logs)
    check = SqliteStore(db)
    await check.open()
    events = await check.events()
    assert len([e for e in events if e.model]) == 15
    assert sum(e.file_edits for e in events) == 6
    assert (await check.totals(f"session:{orch.session_id}")).calls == 15
    assert len(await check.list_state("task")) == 3
    assert len(check.spool) == 0
    await check.aclose()


class CallsUntilPaused:
    """Quick calls (each within a second of the last) until the budget pauses the task."""

    async def run(self, ctx: AgentContext) -> None:
        for _ in range(10):
            await ctx.llm.complete(HI, max_tokens=400, model="sonnet")


async def test_r2_6_usage_json_is_current_when_a_task_pauses(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: at a pause ``usage.json`` (what offline status and decide read) holds every
    charge, though they came faster than its once-a-second rewrite while running."""
    import json

    orch = make_orchestrator({"a": CallsUntilPaused}, provider=LatencyProvider(0.01))
    spec = TaskSpec(id="t1", agent="a", prompt="x", budget=Limits(tokens=1_000))
    seen: list[dict[str, Any]] = []

    paused = anyio.Event()
    orch.bus.subscribe(lambda e: paused.set() if e.name == "task_paused" else None)

    async def at_pause() -> None:
        await paused.wait()
        seen.append(json.loads((tmp_path / "tasks" / "t1" / "usage.json").read_text()))
        await orch.decide("t1", "finish")

    async with anyio.create_task_group() as tg:
        tg.start_soon(at_pause)
        report = await orch.run([spec])
    assert report.outcomes["t1"].status is TaskStatus.FINISHED
    assert seen[0]["usage"]["calls"] == 4  # 4 × 150 tokens, the 5th call's estimate is over
    assert seen[0]["usage"]["tokens"] == (await orch.store.totals("task:t1")).tokens == 600


# real file writes run in worker threads: on a virtual clock, time would jump past the
# task's time budget while a thread works, and the task would pause for nobody
@pytest.mark.real_asyncio
async def test_r2_6_usage_json_is_current_when_the_run_ends(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: after the run every task's ``usage.json`` matches the store."""
    import json

    orch = make_orchestrator({"a": CallsAndEdits}, provider=LatencyProvider(0.01))
    await orch.run([TaskSpec(id=f"t{i}", agent="a", prompt="x") for i in range(2)])
    for tid in ("t0", "t1"):
        doc = json.loads((tmp_path / "tasks" / tid / "usage.json").read_text())
        assert doc["usage"] == (await orch.store.totals(f"task:{tid}")).to_dict()


async def test_r2_6_unwritable_usage_file_fails_only_its_task_and_keeps_the_usage(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: a task whose ``usage.json`` cannot be written (a file stands where its folder
    goes) fails with one clear reason; its usage stays in the store, and the other tasks
    run on."""
    (tmp_path / "tasks").mkdir(parents=True, exist_ok=True)
    (tmp_path / "tasks" / "bad").write_text("not a folder")
    orch = make_orchestrator({"a": OneCall}, provider=LatencyProvider(0.5))
    report = await orch.run([TaskSpec(id="bad", agent="a", prompt="x"),
                             TaskSpec(id="ok", agent="a", prompt="x")])
    bad = report.outcomes["bad"]
    assert bad.status is TaskStatus.FAILED
    assert "cannot write" in bad.reason and "usage.json" in bad.reason
    assert bad.usage.tokens == 150  # charged: the call was paid for
    assert report.outcomes["ok"].status is TaskStatus.COMPLETED


class WritesAFile:
    async def run(self, ctx: AgentContext) -> None:
        await ctx.files.write("x" * 300 + ".txt", "content")


async def test_r1_1_unwritable_workspace_file_fails_only_its_task(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.1: a workspace write that fails (a file name too long) fails that task with a
    clear error naming the file; no edit is charged; other tasks run on."""
    orch = make_orchestrator({"w": WritesAFile, "a": OneCall}, provider=LatencyProvider(0.5))
    report = await orch.run([TaskSpec(id="w1", agent="w", prompt="x"),
                             TaskSpec(id="ok", agent="a", prompt="x")])
    assert report.outcomes["w1"].status is TaskStatus.FAILED
    assert report.outcomes["w1"].reason.startswith("cannot write ")
    assert "File name too long" in report.outcomes["w1"].reason
    assert report.outcomes["w1"].usage.file_edits == 0
    assert report.outcomes["ok"].status is TaskStatus.COMPLETED
