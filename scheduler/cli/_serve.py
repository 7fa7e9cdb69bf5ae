"""``vibe-engine serve CONFIG``: the governed Anthropic-compatible gateway (#21).

The typer command in :mod:`scheduler.cli._app` only parses options; this module checks
them, builds the serve run and runs it until interrupted.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio

from scheduler.cli._checks import free_ports, provider_key, store_location
from scheduler.cli._heap import tune_collector
from scheduler.config import load_config
from scheduler.core import ConfigError, VibeEngineError
from scheduler.serve import Served, listen, serve_forever


def _tls(certfile: Path | None, keyfile: Path | None) -> None:
    if (certfile is None) != (keyfile is None):
        raise ConfigError("--ssl-certfile/--ssl-keyfile", str(certfile or keyfile),
                          "give both, or neither")
    for name, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not path.is_file():
            raise ConfigError(name, str(path), "no such file")


def _first_error(exc: BaseException) -> BaseException:
    """The error inside task-group wrappers (one line names it, not the group): the first
    of ours among them -- a run that could not start fails twice, in the run and in the
    server waiting for it (a second ``serve`` on a state directory in use) -- else the
    only one."""
    leaves = list(_leaves(exc))
    ours = [e for e in leaves if isinstance(e, VibeEngineError)]
    if ours:
        return ours[0]
    return leaves[0] if len(leaves) == 1 else exc


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _loop_options() -> dict[str, bool]:
    """uvloop where it is installed (not on Windows): serve's CPU per call is mostly
    event-loop work, and uvloop does it in C."""
    return {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}


def run_serve(config_path: Path, *, host: str | None, port: int | None,
              ssl_certfile: Path | None, ssl_keyfile: Path | None) -> None:
    """Check everything, then serve until SIGINT/SIGTERM (raises VibeEngineError first)."""
    if host is not None and not host.strip():  # not "no --host": serve.host, unasked
        raise ConfigError("--host", host, "give an address to listen on")
    _tls(ssl_certfile, ssl_keyfile)
    config = load_config(config_path)
    free_ports(config)
    provider_key(config)
    store_location(config)

    def ready(url: str) -> None:
        tune_collector()  # started: what is alive now lives as long as serve
        names = ", ".join(k.name for k in config.serve.keys)
        sys.stderr.write(f"vibe-engine serve on {url} (keys: {names}) — set "
                         f"ANTHROPIC_BASE_URL={url}; Ctrl-C stops\n")
        sys.stderr.flush()

    host = host or config.serve.host
    # the port and the keys are checked before anything is written to the state directory
    sock = listen(host, config.serve.port if port is None else port)
    try:
        served = Served(config)
    except BaseException:
        sock.close()
        raise

    async def main() -> None:
        await serve_forever(served, host=host, ssl_certfile=ssl_certfile,
                            ssl_keyfile=ssl_keyfile, on_ready=ready, sock=sock)

    try:
        anyio.run(main, backend_options=_loop_options())
    except BaseExceptionGroup as group:
        inner = _first_error(group)
        if isinstance(inner, VibeEngineError):
            raise inner from None
        raise
