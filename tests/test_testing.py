"""scheduler.testing: virtual time, the scripted provider and the test orchestrator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

import scheduler.testing
from agents.builtin import QuestionAnswerAgent
from scheduler import CompletionRequest, TaskSpec, VibeConfig
from scheduler.core import OverloadedError
from scheduler.testing import (
    FRIDAY,
    FixedWallClock,
    ScriptedProvider,
    build_orchestrator,
    run_real,
    run_virtual,
)


def _library() -> str:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "trio"
    return "asyncio"


def test_public_names() -> None:
    for name in scheduler.testing.__all__:
        assert hasattr(scheduler.testing, name), name


async def test_async_tests_run_on_virtual_time_by_default() -> None:
    """The conftest default: trio with a MockClock that jumps when every task is blocked."""
    assert _library() == "trio"
    start = anyio.current_time()
    await anyio.sleep(300)
    assert anyio.current_time() - start == 300


@pytest.mark.real_asyncio  # the marker under test
async def test_real_asyncio_marker_selects_asyncio() -> None:
    assert _library() == "asyncio"


def test_run_virtual_jumps_exactly_and_returns_the_result() -> None:
    async def wait(seconds: float) -> float:
        start = anyio.current_time()
        await anyio.sleep(seconds)
        return anyio.current_time() - start

    assert run_virtual(wait, 3600.0) == 3600.0


def test_run_real_runs_on_asyncio() -> None:
    async def library() -> str:
        return _library()

    assert run_real(library) == "asyncio"
    assert run_virtual(library) == "trio"


async def test_scripted_provider_answers_and_fails_over_down_models() -> None:
    provider = ScriptedProvider(latency_s=2.0, prompt=10, completion=5, down={"opus"})
    start = anyio.current_time()
    done = await provider.complete(CompletionRequest(model="haiku", model_id="h", messages=[]))
    assert anyio.current_time() - start == 2.0
    assert (done.model, done.usage.prompt_tokens, done.usage.completion_tokens) == (
        "haiku", 10, 5)
    with pytest.raises(OverloadedError):
        await provider.complete(CompletionRequest(model="opus", model_id="o", messages=[]))
    assert [c.model for c in provider.calls] == ["haiku", "opus"]
    assert provider.max_in_flight == 1 and provider.in_flight == 0


async def test_build_orchestrator_runs_an_agent(tmp_path: Path) -> None:
    orch = build_orchestrator({"qa": QuestionAnswerAgent}, state_dir=tmp_path,
                              session_id="s2")
    assert (orch.config.store, orch.config.session_id) == ("memory", "s2")
    report = await orch.run([TaskSpec(id="q", agent="qa", prompt="What is this?")])
    assert report.outcomes["q"].status == "completed"


def test_fixed_wall_clock_defaults_to_noon_utc() -> None:
    assert FixedWallClock(FRIDAY).now().isoformat() == "2026-11-27T12:00:00+00:00"
    assert FRIDAY.weekday() == 4


def test_build_orchestrator_takes_a_config_or_settings(tmp_path: Path) -> None:
    config = VibeConfig(state_dir=tmp_path, store="memory")
    with pytest.raises(TypeError):
        build_orchestrator({}, config=config, session_id="s1")
    with pytest.raises(TypeError):
        build_orchestrator({})
    assert build_orchestrator({}, config=config).config is config
