"""R3.4: budget a person adds never makes a limit tighter than before -- a dimension the
scope does not limit stays unlimited, whoever re-applies the addition later."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.builtin import StepsAgent
from scheduler import Event, Limits, TaskSpec, VibeConfig
from scheduler.runtime import Orchestrator, RunReport
from scheduler.testing import ScriptedProvider, build_orchestrator

# a SQLite store (worker threads) and the CLI in other processes: real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
CLI = str(Path(sys.executable).parent / "vibe-engine")


def _orch(state: Path, provider: ScriptedProvider) -> Orchestrator:
    config = VibeConfig(state_dir=state, store="sqlite", session_id="s1")
    return build_orchestrator({"coder": StepsAgent}, config=config, provider=provider)


def _spec(budget: Limits) -> TaskSpec:
    return TaskSpec(id="c1", agent="coder", prompt="Fix the crash",
                    params={"steps": 4, "max_tokens": 100}, budget=budget)


async def _events(orch: Orchestrator, name: str, count: int) -> None:
    """Wait until ``orch`` emitted ``count`` events called ``name``."""
    seen = anyio.Event()

    def check(_: Event | None = None) -> None:
        if sum(e.name == name for e in orch.bus.history) >= count:
            seen.set()

    orch.bus.subscribe(check)
    check()
    with anyio.fail_after(30):
        await seen.wait()


async def _decide(state: Path, *args: str) -> None:
    done = await anyio.run_process([CLI, "decide", "c1", *args, "--state-dir", str(state)])
    assert b"sent to the running orchestrator" in done.stdout


async def test_r3_4_added_tokens_never_cap_a_task_resumed_without_a_token_limit(
    tmp_path: Path,
) -> None:
    """c1 (6,000 tokens) pauses at 7,000; ``decide c1 add --tokens 1000`` raises it to
    7,000 and it pauses again.  Its config then drops the token limit and the session
    resumes: the 1,000 tokens added are re-applied at the restart.  Before, that made a
    1,000-token limit of the unlimited one (used 7,000: the task could never run again);
    now the task stays unlimited, and completes once a person answers the pause."""
    state = tmp_path / "st"
    first = _orch(state, ScriptedProvider(latency_s=0, prompt=3_000, completion=500))
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, [_spec(Limits(tokens=6_000))])
        await _events(first, "task_paused", 1)
        await _events(first, "control_listening", 1)
        await _decide(state, "add", "--tokens", "1000")
        await _events(first, "task_paused", 2)  # 7,000 used of 7,000
        assert first.tracker.task_scope("c1").limits.tokens == 7_000
        tg.cancel_scope.cancel()

    provider = ScriptedProvider(latency_s=0, prompt=3_000, completion=500)
    second = _orch(state, provider)
    report: list[RunReport] = []

    async def run(spec: TaskSpec) -> Any:
        report.append(await second.run([spec]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, _spec(Limits(tokens=None)))
        await _events(second, "task_paused", 1)  # its pause outlives the restart
        await _events(second, "control_listening", 1)
        assert second.tracker.task_scope("c1").limits.tokens is None
        await _decide(state, "add", "--tokens", "5000")
    outcome = report[0].outcomes["c1"]
    assert outcome.status == "completed", outcome.reason
    assert len(provider.calls) == 2
    assert second.tracker.task_scope("c1").limits.tokens is None
