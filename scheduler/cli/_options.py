"""Options several commands share, and finding a state directory from a config file.

The read-only commands (``status``, ``decide``, ``report``) read what a run left in
its state directory.  A user who ran ``vibe-engine run team.toml`` should not have
to know where ``team.toml`` put it: ``--config team.toml`` reads ``state_dir`` and
``store`` from the file.  An explicit ``--state-dir`` or ``--store`` still wins.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from scheduler.cli._checks import LOG_LEVELS, check_log_level
from scheduler.config import VibeConfig, load_config, sqlite_file
from scheduler.core import ConfigError

DEFAULT_STATE_DIR = Path(".vibe-engine")
DEFAULT_STORE = "sqlite"
#: What ``--store`` accepts (see :func:`scheduler.store.open_store`).
STORE_FORMS = ("sqlite", "sqlite:///PATH", "memory", "redis://HOST:PORT/DB", "module:Class")
_STORE_HELP = (f"The store the run used, one of: {', '.join(STORE_FORMS)} "
               "(sqlite is STATE_DIR/vibe.db; the PATH after sqlite:// is absolute).")

def check_store(value: str | None) -> str | None:
    """``--store`` has one of the forms of :data:`STORE_FORMS` (checked before any I/O)."""
    if value is None or value in ("sqlite", "memory"):
        return value
    try:
        if sqlite_file(value) is not None:
            return value
    except ConfigError as exc:
        raise typer.BadParameter(f"{value!r}: {exc.reason}") from None
    if value.startswith(("redis://", "rediss://", "unix://")):
        return value
    module, _, name = value.partition(":")
    if module and name and "/" not in value:
        return value
    raise typer.BadParameter(f"{value!r} is not one of {', '.join(STORE_FORMS)}")


def check_state_dir(value: Path | None) -> Path | None:
    """``--state-dir`` holds no control character (a folder no one can type, and every
    line naming it garbled), as ``state_dir`` in a config may not."""
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in str(value)):
        raise typer.BadParameter(f"{str(value)!r} holds a control character")
    return value


StateDir = Annotated[Path, typer.Option(
    "--state-dir", callback=check_state_dir, help="Where the store and task files live.")]
#: ``--state-dir`` of a command that can also learn it from ``--config``.
FoundStateDir = Annotated[Path | None, typer.Option(
    "--state-dir", show_default=False, callback=check_state_dir,
    help=f"Where the store and task files live.  [default: from --config, else "
         f"{DEFAULT_STATE_DIR}]")]
Store = Annotated[str, typer.Option(
    "--store", metavar="STORE", callback=check_store, help=_STORE_HELP)]
FoundStore = Annotated[str | None, typer.Option(
    "--store", metavar="STORE", show_default=False, callback=check_store,
    help=f"{_STORE_HELP}  [default: from --config, else {DEFAULT_STORE}]")]
ConfigFile = Annotated[Path | None, typer.Option(
    "--config", "-c", metavar="CONFIG",
    help="The run's TOML, YAML or JSON config: its state_dir and store are read from it.")]
LogLevel = Annotated[str, typer.Option(
    "--log-level", metavar=f"[{'|'.join(LOG_LEVELS)}]", callback=check_log_level,
    help="Least severe log lines shown.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def locate_state(config: Path | VibeConfig | None, state_dir: Path | None,
                 store: str | None) -> tuple[Path, str]:
    """The state directory and store a read-only command opens: explicit options first,
    then ``config``'s (a file, or one already loaded) ``state_dir`` and ``store``, then
    the defaults."""
    if config is not None:
        cfg = config if isinstance(config, VibeConfig) else load_config(config)
        return (state_dir or cfg.state_dir, store or cfg.store)
    return (state_dir or DEFAULT_STATE_DIR, store or DEFAULT_STORE)


def version_text() -> str:
    """``vibe-engine 0.1.0`` (the installed distribution's version)."""
    try:
        version = metadata.version("vibe-engine")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        version = "unknown"
    return f"vibe-engine {version}"
