"""``vibe-engine`` command line: run, resume, demo, status, decide, serve, report,
fake-api, plugins (R7.2).
Exit codes of ``run`` and ``resume``: see :mod:`scheduler.cli._sessions`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import anyio
import structlog
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from scheduler.cli._checks import (
    LOG_LEVELS,
    check_log_level,
    existing_state,
    fail,
    free_ports,
    html_target,
    number,
    run_cli,
    status_store,
)
from scheduler.cli._decide import decide as decide_paused
from scheduler.cli._decide import stored_status_rows
from scheduler.cli._demo import demo_config
from scheduler.cli._report import gather_report, render_report_tables
from scheduler.cli._report_html import write_html_report
from scheduler.cli._sessions import check_new_session, exit_code, resumable_config
from scheduler.config import VibeConfig, load_config
from scheduler.control._alerts import StatusRow
from scheduler.core import VibeEngineError
from scheduler.observe import LiveView, configure_logging, render_snapshot
from scheduler.observe._status import read_status
from scheduler.runtime import Orchestrator, RunReport
from scheduler.store import open_store

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Govern what LLM agents spend: budgets, leases, fairness, routing.")
_out = Console(width=None if Console().is_terminal else 140)

StateDir = Annotated[Path, typer.Option("--state-dir", help="Where the store and task files live.")]
LiveOpt = Annotated[bool, typer.Option(
    "--live/--no-live", help="Live view on a terminal; live_status log lines otherwise.")]
LogLevel = Annotated[str, typer.Option(callback=check_log_level,
                                       help=f"One of {', '.join(LOG_LEVELS)}.")]
_positive = number(minimum=0, inclusive=False)


def _fail(exc: VibeEngineError) -> typer.Exit:
    return fail(exc)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now: log lines go above the live view."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _run(config: VibeConfig, live: bool = True) -> RunReport:
    from agents import discover_agents, make_provider

    orch = Orchestrator(config, provider=make_provider(config), agents=discover_agents())
    if live:
        if _out.is_terminal:
            structlog.configure(logger_factory=structlog.PrintLoggerFactory(
                file=_CurrentStderr()))  # type: ignore[arg-type]
        orch.add_service(LiveView(orch.view, _out).run)

    async def main() -> RunReport:
        return await orch.run()

    return anyio.run(main)


def render_report(report: RunReport, console: Console) -> None:
    """Per-task and per-model usage tables."""
    tasks = Table(title=f"Tasks — session {report.session_id}")
    for col in ("task", "agent", "type", "complexity", "model", "status", "tokens", "cost $",
                "calls", "edits", "shell"):
        tasks.add_column(col, justify="right" if col in ("tokens", "cost $", "calls") else "left")
    for o in sorted(report.outcomes.values(), key=lambda o: o.task_id):
        u = o.usage
        status = o.status if not o.reason else f"{o.status}: {o.reason[:40]}"
        tasks.add_row(o.task_id, o.agent, o.task_type, o.complexity, o.model or "-", status,
                      f"{u.tokens:,}", f"{u.cost_usd:.4f}", str(u.calls), str(u.file_edits),
                      str(u.shell_commands))
    console.print(tasks)
    models = Table(title="Models")
    for col in ("model", "calls", "prompt", "completion", "cache read", "cache write", "cost $"):
        models.add_column(col, justify="left" if col == "model" else "right")
    for name, t in sorted(report.by_model.items()):
        models.add_row(name, str(t.calls), f"{t.prompt_tokens:,}", f"{t.completion_tokens:,}",
                       f"{t.cache_read_tokens:,}", f"{t.cache_write_tokens:,}",
                       f"{t.cost_usd:.4f}")
    total = report.total
    models.add_row("total", str(total.calls), f"{total.prompt_tokens:,}",
                   f"{total.completion_tokens:,}", f"{total.cache_read_tokens:,}",
                   f"{total.cache_write_tokens:,}", f"{total.cost_usd:.4f}")
    console.print(models)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="TOML or YAML config file.")],
    log_level: LogLevel = "info",
    live: LiveOpt = True,
) -> None:
    """Run the tasks of CONFIG as a new session.

    Exit code 0 when every task completed, 1 when a task failed or was stopped on its
    budget, 2 when the run could not start.
    """
    configure_logging(level=log_level)
    try:
        cfg = load_config(config)
        free_ports(cfg)
        check_new_session(cfg)
        report = _run(cfg, live)
    except VibeEngineError as exc:
        raise _fail(exc) from None
    render_report(report, _out)
    raise typer.Exit(code=exit_code(report))


@app.command()
def resume(
    session: Annotated[str | None, typer.Argument(
        help="The session to continue (default: the last interrupted one).")] = None,
    state_dir: StateDir = Path(".vibe-engine"),
    store: str = "sqlite",
    log_level: LogLevel = "info",
    live: LiveOpt = True,
) -> None:
    """Continue an interrupted session: ended tasks keep their results, interrupted ones
    continue from their checkpoints, paused ones stay paused for `decide`.

    Exit codes as for `run`.
    """
    configure_logging(level=log_level)
    try:
        existing_state(state_dir, store)  # resume reads a session; it never creates one
        cfg = resumable_config(state_dir, store, session)
        free_ports(cfg)
        report = _run(cfg, live)
    except VibeEngineError as exc:
        raise _fail(exc) from None
    render_report(report, _out)
    raise typer.Exit(code=exit_code(report))


@app.command()
def demo(
    state_dir: StateDir = Path(".vibe-engine"),
    tasks: Annotated[int, typer.Option(min=0, max=10_000)] = 24,
    seed: int = 0,
    time_scale: Annotated[float, typer.Option(callback=number(maximum=1_000))] = 0.25,
    log_level: LogLevel = "warning",
    live: LiveOpt = True,
    staged: Annotated[bool, typer.Option(
        help="Also stage an opus outage (a task is deferred) and a tight budget (a task "
             "pauses for a decision).")] = True,
    decision_timeout: Annotated[float, typer.Option(
        callback=number(minimum=0, inclusive=False),
        help="Seconds a paused task waits for `vibe-engine decide` before it is saved and "
             "finished.")] = 3.0,
) -> None:
    """Run the built-in workload (simulated provider, SQLite store, no API key)."""
    configure_logging(level=log_level)
    try:
        report = _run(demo_config(state_dir, tasks=tasks, seed=seed, time_scale=time_scale,
                                  staged=staged, decision_timeout_s=decision_timeout), live)
    except VibeEngineError as exc:
        raise _fail(exc) from None
    render_report(report, _out)


@app.command()
def status(
    state_dir: StateDir = Path(".vibe-engine"),
    store: str = "sqlite",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show the running orchestrator's state, or what the store recorded when none runs:
    every task of the last session with its state (paused, interrupted and pending ones
    too) and what each completed agent returned."""

    async def main() -> dict[str, Any]:
        st = open_store(status_store(state_dir, store), state_dir)
        await st.open()
        try:
            data: dict[str, Any] = (
                await read_status(st, state_dir, today=date.today())
            ).to_dict()
            rows = await stored_status_rows(st, state_dir)
            data["budgets"] = [r.to_dict() for r in rows]
            return data
        finally:
            await st.aclose()

    try:
        data = anyio.run(main)
    except VibeEngineError as exc:
        raise _fail(exc) from None
    if as_json:
        _out.print_json(json.dumps(data))
        return
    from scheduler.observe import Snapshot

    budgets = data.pop("budgets", [])
    snap = Snapshot.from_dict(data)
    _out.print(render_snapshot(snap))
    if budgets:
        _out.print(budget_table([StatusRow(**r) for r in budgets]))
    results = Table(title="Results")
    for col in ("task", "result"):
        results.add_column(col)
    for t in snap.tasks:
        if t.result is not None:
            text = json.dumps(t.result)
            results.add_row(t.task_id, Text(text if len(text) <= 100 else f"{text[:99]}…"))
    if results.row_count:
        _out.print(results)


_LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "red", "exceeded": "bold red"}


def budget_table(rows: list[StatusRow]) -> Table:
    """R3: each task's budget use per dimension with its alert level."""
    table = Table(title="Budgets")
    for col in ("task", "dimension", "used", "limit", "%", "level"):
        table.add_column(col, justify="right" if col in ("used", "limit", "%") else "left")
    for r in rows:
        money = r.dimension == "cost_usd"
        level = f"[{_LEVEL_STYLE[r.level]}]{r.level}[/]" + (" (paused)" if r.paused else "")
        table.add_row(r.task_id, r.dimension, f"{r.used:.4f}" if money else f"{r.used:,.0f}",
                      f"{r.limit:.4f}" if money else f"{r.limit:,.0f}",
                      f"{r.fraction:.0%}", level)
    return table


@app.command()
def decide(
    task: Annotated[str, typer.Argument(help="The paused task's id.")],
    action: Annotated[str, typer.Argument(help="add_budget (add), finish (save) or review.")],
    tokens: Annotated[int | None, typer.Option(min=1, help="Tokens to add.")] = None,
    cost: Annotated[float | None, typer.Option(
        callback=_positive, help="Dollars to add.")] = None,
    time_s: Annotated[float | None, typer.Option(
        "--time-s", callback=_positive, help="Seconds to add.")] = None,
    file_edits: Annotated[int | None, typer.Option(min=1, help="File edits to add.")] = None,
    shell_commands: Annotated[int | None, typer.Option(
        min=1, help="Shell commands to add.")] = None,
    state_dir: StateDir = Path(".vibe-engine"),
    store: str = "sqlite",
) -> None:
    """Decide about a paused task: add budget and continue, save and finish, or review (R3.4).

    Talks to the running orchestrator over its owner-only socket; when none
    runs, the decision is stored and applied when the orchestrator restarts.
    """
    try:
        existing_state(state_dir, None)  # the store is checked if no orchestrator runs
        reply = decide_paused(
            task, action, tokens=tokens, cost=cost, time_s=time_s, file_edits=file_edits,
            shell_commands=shell_commands, state_dir=state_dir, store=store,
        )
    except VibeEngineError as exc:
        raise _fail(exc) from None
    if reply.get("action") == "review":
        _out.print_json(json.dumps(reply["summary"]))
        return
    how = "sent to the running orchestrator" if reply["via"] == "socket" else (
        "stored; applied when the orchestrator starts or polls")
    _out.print(f"{reply['action']} for {task}: {how}")


@app.command("fake-api")
def fake_api(
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8765,
    input_ratio: Annotated[float, typer.Option(
        callback=number(minimum=0, inclusive=False, maximum=1_000),
        help="Server input count ÷ tiktoken's.")] = 1.2,
    output_tokens: Annotated[int, typer.Option(min=0, max=1_000_000)] = 40,
    script: Annotated[Path | None, typer.Option(
        help="JSON lines, one Messages API response body per line, served in order "
             "(streamed requests get the same bodies as events).")] = None,
) -> None:
    """Serve a fake Anthropic API on 127.0.0.1 (try provider.kind="anthropic" without a key)."""
    from agents.fake_api import FakeAnthropicServer, FakeApiConfig, load_script

    bodies = None
    if script is not None:
        try:
            bodies = load_script(script)
        except (OSError, ValueError) as exc:
            raise fail(VibeEngineError(f"--script: {exc}")) from None
    try:
        server = FakeAnthropicServer(
            FakeApiConfig(input_ratio=input_ratio, output_tokens=output_tokens), port=port,
            script=bodies,
        )
    except OSError as exc:
        raise fail(VibeEngineError(
            f"--port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror}")) from None
    scripted = f", replaying {len(bodies)} scripted responses" if bodies is not None else ""
    _out.print(f"fake Anthropic API on {server.base_url}{scripted} — set provider.base_url "
               "to it and ANTHROPIC_API_KEY to any value; Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="TOML or YAML config with a [serve] section.")],
    host: Annotated[str | None, typer.Option(help="Listen address (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Listen port (default serve.port; 0 picks a free one).")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    log_level: LogLevel = "warning",
) -> None:
    """Serve the Anthropic Messages API, every call governed by the keys' budgets (#21):
    point an agent's ANTHROPIC_BASE_URL here and give it a client key."""
    from scheduler.cli._serve import run_serve

    configure_logging(level=log_level)
    try:
        run_serve(config, host=host, port=port, ssl_certfile=ssl_certfile,
                  ssl_keyfile=ssl_keyfile)
    except VibeEngineError as exc:
        raise _fail(exc) from None


@app.command()
def report(
    state_dir: StateDir = Path(".vibe-engine"),
    store: str = "sqlite",
    day_from: Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD.")] = None,
    day_to: Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD.")] = None,
    html: Annotated[Path | None, typer.Option(
        callback=html_target, help="Also write a self-contained HTML.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cost and tokens per day, model, task type and agent; alert and deadlock history."""

    async def main() -> Any:
        existing_state(state_dir, store)
        st = open_store(store, state_dir)
        await st.open()
        try:
            return await gather_report(st, day_from=day_from, day_to=day_to,
                                       state_dir=state_dir)
        finally:
            await st.aclose()

    try:
        data = anyio.run(main)
    except VibeEngineError as exc:
        raise _fail(exc) from None
    if as_json:
        _out.print_json(json.dumps(dataclasses.asdict(data)))
    else:
        render_report_tables(data, _out)
    if html is not None:
        write_html_report(data, html)
        _out.print(f"HTML report written to {html}")


@app.command()
def plugins() -> None:
    """List registered agent plugins with their distribution and version."""
    from agents import plugin_infos

    table = Table(title="Agent plugins (entry point group vibe_engine.agents)")
    for col in ("name", "target", "distribution", "version", "status"):
        table.add_column(col, overflow="fold")
    for p in plugin_infos():
        status = f"broken: {p.error}" if p.error else "ok"
        table.add_row(*(Text(v) for v in (p.name, p.target, p.distribution, p.version, status)))
    _out.print(table)


def main() -> None:
    run_cli(app)
