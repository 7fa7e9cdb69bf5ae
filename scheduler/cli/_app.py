"""``vibe-engine`` command line: run, resume, demo, status, decide, serve, report,
fake-api, plugins (R7.2).
Exit codes of ``run`` and ``resume``: see :mod:`scheduler.cli._sessions`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from datetime import date
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import anyio
import structlog
import typer
from rich import box as rich_box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from scheduler.cli._checks import (
    existing_state,
    fail,
    free_ports,
    html_target,
    known_agents,
    number,
    provider_key,
    run_cli,
    store_location,
)
from scheduler.cli._decide import decide as decide_paused
from scheduler.cli._decide import format_review, normalize_action
from scheduler.cli._demo import demo_config
from scheduler.cli._heap import tune_collector
from scheduler.cli._options import (
    ConfigFile,
    FoundStateDir,
    FoundStore,
    Json,
    LogLevel,
    StateDir,
    Store,
    check_state_dir,
    locate_state,
    version_text,
)
from scheduler.cli._report import gather_report, render_report_tables
from scheduler.cli._report_html import write_html_report
from scheduler.cli._sessions import check_new_session, exit_code, resumable_config
from scheduler.cli._signals import EXIT_TERMINATED, until_sigterm
from scheduler.cli._status import gather_status, print_status
from scheduler.config import VibeConfig, load_config
from scheduler.core import VibeEngineError
from scheduler.observe import LiveView, configure_logging
from scheduler.observe._text import clip
from scheduler.runtime import Orchestrator, RunReport
from scheduler.store import open_store

# plain click help: flags without a `<bool>` placeholder, no boxes when piped
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Govern what LLM agents spend: budgets, leases, fairness, routing.")
_out = Console(width=None if Console().is_terminal else 140)

LiveOpt = Annotated[bool, typer.Option(
    "--live/--no-live", help="Live view on a terminal; live_status log lines otherwise.")]
_positive = number(minimum=0, inclusive=False)


def _fail(exc: VibeEngineError) -> typer.Exit:
    return fail(exc)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Govern what LLM agents spend: budgets, leases, fairness, routing."""


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now: log lines go above the live view."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _run(config: VibeConfig, live: bool = True) -> RunReport:
    from agents import discover_agents, make_provider

    agents = discover_agents()
    known_agents(config, agents)  # before the store opens: a bad config writes nothing
    orch = Orchestrator(config, provider=make_provider(config), agents=agents)
    if live:
        if _out.is_terminal:
            structlog.configure(logger_factory=structlog.PrintLoggerFactory(
                file=_CurrentStderr()))  # type: ignore[arg-type]
        orch.add_service(LiveView(orch.view, _out).run)

    async def main() -> RunReport | None:
        return await until_sigterm(orch.run)

    tune_collector()  # built: the orchestrator and what it loaded live as long as the run
    report = anyio.run(main)
    if report is None:  # SIGTERM: the run was cancelled, its tasks recorded interrupted
        typer.echo("terminated (SIGTERM): interrupted tasks continue with `vibe-engine "
                   "resume`", err=True)
        raise typer.Exit(code=EXIT_TERMINATED)
    return report


def render_report(report: RunReport, console: Console) -> None:
    """Per-task and per-model usage tables.

    Below 120 columns the task table leaves out type and complexity (and the reason of
    a status) and draws lighter borders with less padding, so every figure and status
    stays whole at 80 columns; a long task id or agent wraps instead (#23)."""
    narrow = console.width < 120
    box_ = rich_box.SIMPLE_HEAD if narrow else rich_box.HEAVY_HEAD
    tight: dict[str, Any] = (
        {"show_edge": False, "pad_edge": False, "collapse_padding": True} if narrow else {})
    tasks = Table(title=f"Tasks — session {report.session_id}", box=box_, **tight)
    wide_only = ("type", "complexity")
    for col in ("task", "agent", "type", "complexity", "model", "status", "tokens", "cost $",
                "calls", "edits", "shell"):
        if not (narrow and col in wide_only):
            numeric = col in ("tokens", "cost $", "calls", "edits", "shell")
            tasks.add_column(col, justify="right" if numeric else "left",
                             no_wrap=numeric or (narrow and col == "status"),
                             overflow="fold" if col in ("task", "agent") else "ellipsis")
    for o in sorted(report.outcomes.values(), key=lambda o: o.task_id):
        u = o.usage
        status = o.status if not o.reason or narrow else f"{o.status}: {clip(o.reason, 60)}"
        kind = () if narrow else (o.task_type, o.complexity)
        tasks.add_row(o.task_id, o.agent, *kind, o.model or "-", status,
                      f"{u.tokens:,}", f"{u.cost_usd:.4f}", str(u.calls), str(u.file_edits),
                      str(u.shell_commands))
    console.print(tasks)
    models = Table(title="Models", box=box_, **tight)
    for col in ("model", "calls", "prompt", "completion", "cache read", "cache write", "cost $"):
        models.add_column(col, justify="left" if col == "model" else "right",
                          no_wrap=col != "model")
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
    config: Annotated[Path, typer.Argument(
        metavar="CONFIG", help="TOML, YAML or JSON config file.")],
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", show_default=False, callback=check_state_dir,
        help="Where the store and task files live [default: the config's state_dir].")] = None,
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
        if state_dir is not None:
            cfg = cfg.model_copy(update={"state_dir": state_dir})
        free_ports(cfg)
        provider_key(cfg)
        store_location(cfg)
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
    store: Store = "sqlite",
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
        provider_key(cfg)
        report = _run(cfg, live)
    except VibeEngineError as exc:
        raise _fail(exc) from None
    render_report(report, _out)
    raise typer.Exit(code=exit_code(report))


@app.command()
def demo(
    state_dir: StateDir = Path(".vibe-engine"),
    tasks: Annotated[int, typer.Option(
        min=0, max=10_000, help="Agents in the workload (the staged tasks come on top).")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the simulated outcomes.")] = 0,
    time_scale: Annotated[float, typer.Option(
        callback=number(maximum=1_000),
        help="Multiplies the simulated model latencies (0.1: ten times faster).")] = 0.25,
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
    state_dir: FoundStateDir = None,
    store: FoundStore = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Show the running orchestrator's state, or what the store recorded when none runs:
    every task of the last session with its state (paused, interrupted and pending ones
    too), the session and day budget bars, each task's own budget rows and what each
    completed agent returned."""
    try:
        cfg = load_config(config) if config is not None else None
        data = anyio.run(partial(gather_status, *locate_state(cfg, state_dir, store),
                                 today=date.today(), config=cfg))
    except VibeEngineError as exc:
        raise _fail(exc) from None
    if as_json:
        _out.print_json(json.dumps(data))
        return
    print_status(data, _out)


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
    state_dir: FoundStateDir = None,
    store: FoundStore = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Decide about a paused task: add budget and continue, save and finish, or review.

    Talks to the running orchestrator over its owner-only socket; when none
    runs, the decision is stored and applied when the orchestrator restarts.
    """
    if normalize_action(action) == "add_budget" and all(
            v is None for v in (tokens, cost, time_s, file_edits, shell_commands)):
        raise _fail(VibeEngineError(
            f"decide {task} {action} needs an amount: --tokens N, --cost USD, --time-s S, "
            "--file-edits N or --shell-commands N"))
    try:
        where, backend = locate_state(config, state_dir, store)
        existing_state(where, None)  # the store is checked if no orchestrator runs
        reply = decide_paused(
            task, action, tokens=tokens, cost=cost, time_s=time_s, file_edits=file_edits,
            shell_commands=shell_commands, state_dir=where, store=backend,
        )
    except VibeEngineError as exc:
        raise _fail(exc) from None
    if as_json:
        _out.print_json(json.dumps(reply))
        return
    if reply.get("action") == "review":
        same = "" if config is None and state_dir is None else f" --state-dir {where}"
        _out.print(Text(format_review(reply["summary"], same)), soft_wrap=True)
        return
    how = "sent to the running orchestrator" if reply["via"] == "socket" else (
        "stored; applied when the orchestrator starts or polls")
    _out.print(f"{reply['action']} for {task}: {how}")


@app.command("fake-api")
def fake_api(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Listen port on 127.0.0.1.")] = 8765,
    input_ratio: Annotated[float, typer.Option(
        callback=number(minimum=0, inclusive=False, maximum=1_000),
        help="Server input count ÷ tiktoken's.")] = 1.2,
    output_tokens: Annotated[int, typer.Option(
        min=0, max=1_000_000, help="Output tokens of each generated answer.")] = 40,
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
    # one line however wide, so a script reading the first line gets the whole URL
    _out.print(f"fake Anthropic API on {server.base_url}{scripted} — set provider.base_url "
               "to it and ANTHROPIC_API_KEY to any value; Ctrl-C stops", soft_wrap=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(
        help="TOML, YAML or JSON config with a [serve] section.")],
    host: Annotated[str | None, typer.Option(help="Listen address (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Listen port (default serve.port; 0 picks a free one).")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    log_level: LogLevel = "warning",
) -> None:
    """Serve the Anthropic Messages API, every call governed by the keys' budgets:
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
    state_dir: FoundStateDir = None,
    store: FoundStore = None,
    config: ConfigFile = None,
    day_from: Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD.")] = None,
    day_to: Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD.")] = None,
    html: Annotated[Path | None, typer.Option(
        callback=html_target, help="Write a self-contained HTML file instead of the tables.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Cost and tokens per day, model, task type and agent; alert and deadlock history."""

    async def main(cfg: VibeConfig | None) -> Any:
        where, backend = locate_state(cfg, state_dir, store)
        existing_state(where, backend)
        st = open_store(backend, where, replay_spool=False)
        await st.open()
        try:
            return await gather_report(st, day_from=day_from, day_to=day_to,
                                       state_dir=where, config=cfg)
        finally:
            await st.aclose()

    try:
        data = anyio.run(main, load_config(config) if config is not None else None)
    except VibeEngineError as exc:
        raise _fail(exc) from None
    if as_json:
        _out.print_json(json.dumps(dataclasses.asdict(data)))
    if html is not None:
        write_html_report(data, html)
        # beside --json the note goes to stderr: stdout stays one JSON document
        typer.echo(f"HTML report written to {html}", err=as_json)
    elif not as_json:
        render_report_tables(data, _out)


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
