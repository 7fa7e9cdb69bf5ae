"""#23: used as a library, vibe-engine prints nothing unless the application configures
logging; configured, its lines arrive through the application's own set-up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_SCRIPT = textwrap.dedent("""
    import logging, sys
    import anyio
    from scheduler import AgentContext, Orchestrator, TaskSpec, VibeConfig
    from agents import make_provider

    MODE = sys.argv[1]
    if MODE == "stdlib":
        logging.basicConfig(level="DEBUG", stream=sys.stderr)
    elif MODE == "structlog":
        import structlog
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


    class Echo:
        async def run(self, ctx: AgentContext) -> dict:
            ctx.log.info("agent_line")
            reply = await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=50)
            return {"text": reply.text}


    config = VibeConfig(state_dir="state", store="sqlite")
    orch = Orchestrator(config, provider=make_provider(config), agents={"echo": Echo})
    report = anyio.run(orch.run, [TaskSpec(id="a", agent="echo", prompt="x")])
    assert report.outcomes["a"].status == "completed", report.outcomes["a"].reason
""")


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(_SCRIPT)
    return subprocess.run([sys.executable, str(script), mode], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.real_asyncio
def test_issue23_library_use_prints_nothing(tmp_path: Path) -> None:
    """#23: a script that runs an Orchestrator through the public API, with no logging
    set up, prints nothing on stdout or stderr (structlog's defaults would print)."""
    done = _run(tmp_path, "none")
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


@pytest.mark.real_asyncio
def test_issue23_library_logs_reach_stdlib_logging_when_configured(tmp_path: Path) -> None:
    """#23: an application that configures :mod:`logging` gets the runtime's lines, the
    agent's own and the per-call debug chatter under ``vibe_engine.*`` loggers."""
    done = _run(tmp_path, "stdlib")
    assert done.returncode == 0, done.stderr
    assert "INFO:vibe_engine.orchestrator:run_ended" in done.stderr
    assert "DEBUG:vibe_engine.events:task_completed" in done.stderr  # #22: one per task
    assert "vibe_engine.agent:agent_line" in done.stderr
    assert done.stdout == ""


@pytest.mark.real_asyncio
def test_issue23_library_logs_go_through_structlog_when_configured(tmp_path: Path) -> None:
    """#23: an application that configures structlog gets the lines through it."""
    done = _run(tmp_path, "structlog")
    assert done.returncode == 0, done.stderr
    assert "task_completed" in done.stderr and "agent_line" in done.stderr
    assert done.stdout == ""


def test_issue23_modules_log_through_the_quiet_logger() -> None:
    """#23: no module takes a logger from structlog directly (it would print through
    structlog's defaults in a library); they use ``scheduler.core.get_logger``."""
    root = Path(__file__).resolve().parents[1]
    allowed = {"scheduler/core/_log.py"}
    offenders = [
        str(path.relative_to(root))
        for pkg in ("scheduler", "agents", "policies")
        for path in (root / pkg).rglob("*.py")
        if "structlog.get_logger(" in path.read_text(encoding="utf-8")
        and str(path.relative_to(root)) not in allowed
    ]
    assert offenders == []


def test_issue23_a_level_the_configured_logger_drops_builds_no_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """#22/#23: with structlog filtering at info (what ``vibe-engine run`` sets), a debug
    line (one per model call: ``token_estimate_discrepancy``) is dropped before the lazy
    proxy builds a logger; lines at the level still arrive, and a wrapper class that is
    not a filtering one gets every line as before."""
    import logging

    import structlog

    from scheduler.core import get_logger

    built: list[str] = []
    factory = structlog.PrintLoggerFactory(file=sys.stdout)

    def counting_factory(*args: object) -> structlog.PrintLogger:
        built.append("logger")
        return factory(*args)

    structlog.configure(
        processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=counting_factory, cache_logger_on_first_use=False)  # (conftest resets)
    log = get_logger("vibe_engine.test")
    log.debug("dropped_line", a=1)
    assert built == []
    log.info("kept_line", a=1)
    assert built == ["logger"]
    structlog.configure(wrapper_class=structlog.BoundLogger)
    log.debug("unfiltered_line")
    assert len(built) == 2
    out = capsys.readouterr().out
    assert "kept_line" in out and "unfiltered_line" in out and "dropped_line" not in out
