"""Checks on command-line input: option values, state directories, one-line errors.

Bad input on the command line gets one line naming the option, exit status 2,
and nothing written.  Option values are checked by the callbacks here before a
command runs (click's own float type accepts ``nan`` and ``inf``); the
read-only commands (``status``, ``report``, ``decide``) first check that the
state directory and its store exist, so a typo never creates a database; and
:func:`run_cli` turns click's usage errors and stray OS errors into that one
line instead of a usage box or a traceback.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape

from scheduler.config import VibeConfig, api_key_problem, base_url_problem, sqlite_file
from scheduler.config._load import shown
from scheduler.core import ConfigError, VibeEngineError

#: Exit status for bad input (a usage error, a bad config, a refused decision).
BAD_INPUT = 2
_err = Console(stderr=True)


def error_line(message: str) -> None:
    """Print ``error: message`` to stderr as exactly one line (no markup, no wrapping)."""
    text = " ".join(str(message).split())
    _err.print(f"[red]error:[/red] {escape(text)}", soft_wrap=True, highlight=False)


def fail(exc: BaseException) -> typer.Exit:
    """Report ``exc`` in one line; the caller raises the returned Exit (status 2)."""
    error_line(str(exc))
    return typer.Exit(code=BAD_INPUT)


def number(*, minimum: float = 0.0, inclusive: bool = True,
           maximum: float | None = None) -> Callable[[Any], Any]:
    """A callback refusing a number that is NaN, infinite, or out of its range."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        low_ok = value >= minimum if inclusive else value > minimum
        if not math.isfinite(value) or not low_ok or (maximum is not None and value > maximum):
            bound = f"{'>=' if inclusive else '>'} {minimum:g}"
            upper = f" and <= {maximum:g}" if maximum is not None else ""
            raise typer.BadParameter(f"{value!r} is not a finite number {bound}{upper}")
        return value

    return check


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def check_log_level(value: str) -> str:
    """A logging level name (any case)."""
    if value.lower() not in LOG_LEVELS or value.upper() not in logging.getLevelNamesMapping():
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def html_target(value: Path | None) -> Path | None:
    """``report --html FILE``: its folder must exist and FILE must not be a folder."""
    if value is None:
        return value
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; give a file name")
    if not value.parent.is_dir():
        raise typer.BadParameter(f"folder {value.parent} does not exist")
    if value.exists() and not _an_html_page(value):
        # a slip of the tab key (--html st/vibe.db, --html team.toml) replaced the store
        # or the config with the report
        raise typer.BadParameter(f"{value} exists and is not an HTML page; give a new name")
    return value


def _an_html_page(path: Path) -> bool:
    """Whether ``path`` may be replaced by a report: an earlier report (a file starting
    like an HTML page), an empty file, or no regular file (``/dev/stdout``)."""
    if not path.is_file():
        return True
    try:
        with path.open("rb") as f:
            head = f.read(64).lstrip().lower()
    except OSError:
        return False
    return head.startswith((b"<!doctype html", b"<html")) or not head


def existing_state(state_dir: Path, store: str | None) -> None:
    """Refuse a state directory (or, unless ``store`` is None, a SQLite store) that does not
    exist: ``status``, ``report`` and ``decide`` only read what a run left, and must never
    create it."""
    if not state_dir.is_dir():
        raise VibeEngineError(f"state directory {state_dir} does not exist (nothing has run "
                              "there; check --state-dir)")
    if store is None:
        return
    db = state_dir / "vibe.db" if store == "sqlite" else sqlite_file(store)
    if db is not None and not db.is_file():
        raise VibeEngineError(f"no store at {db} (nothing has run there; check --state-dir "
                              "and --store)")


def store_location(config: VibeConfig) -> None:
    """Refuse a ``sqlite:///dir/x.db`` whose folder exists only relative to the working
    directory: written by someone reading three slashes as SQLAlchemy does (a relative
    path), it would otherwise silently make ``/dir`` and a new, empty database there."""
    db = sqlite_file(config.store)
    if db is None or db.parent.is_dir():
        return
    relative = Path(str(db).lstrip("/"))
    if relative.parent.is_dir():
        raise ConfigError("store", config.store, (
            f"ambiguous: the path after sqlite:// is absolute, and {db.parent} does not "
            f"exist while ./{relative.parent} does; write sqlite://{relative.resolve()} "
            "for that one"))


def free_ports(config: VibeConfig) -> None:
    """Refuse, before anything starts, a metrics port another process listens on
    (``vibe-engine run`` would otherwise run without the metrics it was asked for)."""
    metrics = config.metrics
    if not metrics.enabled or metrics.port == 0:
        return
    family = socket.AF_INET6 if ":" in metrics.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((metrics.host, metrics.port))
        except OSError as exc:
            raise ConfigError("metrics.port", metrics.port,
                              f"cannot listen on {metrics.host}: {exc.strerror}") from None


def provider_key(config: VibeConfig, env: Mapping[str, str] | None = None) -> None:
    """Refuse, before anything is written, a secret read from the environment that no
    HTTP request can carry: the provider's API key or a webhook header value with a
    space, a line break or a control character, or a webhook URL that is not one
    (every call, or every notification, of the run would fail with it).  A variable
    that is not set is left to the code that reads it."""
    env = os.environ if env is None else env
    wanted: list[tuple[str, str, Callable[[str], str | None]]] = []
    if config.provider.kind == "anthropic":
        wanted.append(("provider.api_key_env", config.provider.api_key_env, api_key_problem))
    for i, hook in enumerate(config.alerts.webhooks):
        where = f"alerts.webhooks[{i}]"
        if hook.url_env:
            wanted.append((f"{where}.url_env", hook.url_env, base_url_problem))
        wanted += [(f"{where}.headers.{header}", var, api_key_problem)
                   for header, var in hook.headers.items()]
    for field, var, check in wanted:
        problem = check(env[var]) if env.get(var) else None
        if problem is not None:
            raise ConfigError(field, var, problem)


def known_agents(config: VibeConfig, agents: Mapping[str, Any]) -> None:
    """Refuse a task naming no registered agent, or ``params`` its agent's
    ``params_model`` refuses, before anything is written (the orchestrator would refuse
    an unknown agent too, but only once its store was created; bad params crashed the
    agent at run time)."""
    for i, task in enumerate(config.tasks):
        if task.agent not in agents:
            raise ConfigError(f"tasks.{i}.agent", task.agent,
                              f"unknown agent; available: {', '.join(sorted(agents))}")
        schema = getattr(agents[task.agent], "params_model", None)
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            try:
                schema.model_validate(task.params)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ConfigError(f"tasks.{i}.params.{where}", shown(err.get("input")),
                                  err["msg"]) from None


def status_store(state_dir: Path, store: str) -> str:
    """The store ``status`` opens: ``store`` if it exists; an empty memory store when only a
    running orchestrator's ``status.json`` is there (a run on a memory store, found with
    the default ``sqlite``); else refused -- a ``sqlite:///PATH`` named that holds no store
    (a typo) is not shown as an empty one."""
    try:
        existing_state(state_dir, store)
    except VibeEngineError:
        if store != "sqlite" or not (state_dir / "status.json").is_file():
            raise
        return "memory"
    return store


def run_cli(command: Callable[..., Any]) -> None:
    """Run the typer app ``command``: usage errors and OS errors become one line, status 2."""
    try:
        code = command(standalone_mode=False, prog_name="vibe-engine")
    except typer.TyperException as exc:  # click's usage errors
        if type(exc).__name__ == "NoArgsIsHelpError":
            getattr(exc, "show")()  # noqa: B009 - the help text, as `vibe-engine` alone shows
        else:
            error_line(exc.format_message())
        code = BAD_INPUT
    except typer.Abort:
        code = 130
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        error_line(f"{exc.strerror or exc}{where}")
        code = BAD_INPUT
    sys.exit(code if isinstance(code, int) else 0)
