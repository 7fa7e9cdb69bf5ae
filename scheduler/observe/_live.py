"""The live terminal view of ``vibe-engine run`` and ``demo`` (rich).

:func:`~scheduler.observe._screen.render_snapshot` lays a snapshot out to the
terminal's size: agents and their state (running / waiting with queue position
and estimated wait / paused with the command that answers it / deferred …),
budget bars per scope in alert colours (green below 70 %, yellow to 90 %, red
above), leases and pool use, model health and the recent notable events.
:class:`LiveView` is an orchestrator *service* that redraws it a few times per
second; meanwhile log lines go to ``<state_dir>/logs/live.log`` (see
:func:`logs_to_file`) instead of scrolling over the view.  When the console is
not a terminal it writes one structured log line per refresh period instead
(``live_status``), so CI logs stay readable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import anyio
import structlog
from rich.console import Console, RenderableType
from rich.live import Live

from scheduler.core import get_logger
from scheduler.observe._screen import render_snapshot
from scheduler.observe._snapshot import Snapshot
from scheduler.observe._view import RunView, snapshot_of

__all__ = ["LiveView", "live_log_path", "logs_to_file", "render_snapshot", "summary_fields"]

_log = get_logger("vibe_engine.live")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def live_log_path(state_dir: Path) -> Path:
    """Where log lines go while the live view is drawn."""
    return Path(state_dir) / "logs" / "live.log"


class _LogSink:
    """A text file for log lines, without the terminal colours of console renderers."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def write(self, text: str) -> int:
        self._file.write(_ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self._file.flush()


@contextlib.contextmanager
def logs_to_file(path: Path) -> Iterator[Path]:
    """While open, structlog lines, the standard library's stream handlers and anything
    else written to ``sys.stderr`` go to ``path`` (appended, owner-only), so they do not
    scroll over a full-screen view; everything is put back on exit."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(fd, "a", encoding="utf-8", buffering=1) as file:
        sink = _LogSink(file)
        before = structlog.get_config()
        consoles = (sys.stderr, sys.__stderr__, sys.stdout, sys.__stdout__)
        handlers = [h for h in logging.getLogger().handlers
                    if type(h) is logging.StreamHandler and h.stream in consoles]
        streams = [h.setStream(sink) for h in handlers]
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(
            file=sink))  # type: ignore[arg-type]
        try:
            with contextlib.redirect_stderr(sink):
                yield path
        finally:
            structlog.configure(**before)
            for h, stream in zip(handlers, streams, strict=True):
                h.setStream(stream)

def summary_fields(snap: Snapshot) -> dict[str, Any]:
    """The facts of a snapshot as flat log fields (the non-TTY view)."""
    fields: dict[str, Any] = {f"n_{s}": n for s, n in sorted(snap.counts().items())}
    fields["tokens"] = snap.totals.get("tokens", 0)
    fields["cost_usd"] = snap.totals.get("cost_usd", 0.0)
    waiting = [t for t in snap.tasks if t.status == "waiting"]
    if waiting:
        fields["waiting"] = {t.task_id: t.queue_position for t in waiting}
    paused = [t for t in snap.tasks if t.status == "paused"]
    if paused:
        fields["paused"] = {t.task_id: t.answer for t in paused}
    hot = [b for b in snap.budgets if b.level != "ok"]
    if hot:
        fields["budgets"] = {f"{b.scope}/{b.dimension}": b.level for b in hot}
    down = [m.model for m in snap.models if m.state != "available"]
    if down:
        fields["models_degraded"] = down
    return fields


class LiveView:
    """An orchestrator service drawing the live view (or log lines when not on a TTY)."""

    def __init__(
        self,
        view: RunView,
        console: Console,
        *,
        refresh_s: float = 0.25,
        log_every_s: float = 5.0,
        clock: Callable[[], float] = anyio.current_time,
        log_file: Path | Literal["state_dir"] | None = "state_dir",
    ) -> None:
        self.view = view
        self.console = console
        #: Where log lines go while the view is drawn (``None``: above the view, as printed).
        self.log_file = (live_log_path(view.config.state_dir) if log_file == "state_dir"
                         else log_file)
        self.refresh_s = refresh_s
        self.log_every_s = log_every_s
        self._clock = clock
        self.frames = 0

    def snapshot(self) -> Snapshot:
        return snapshot_of(self.view, now=self._clock())

    def render(self) -> RenderableType:
        size = self.console.size
        return render_snapshot(self.snapshot(), height=size.height, width=size.width,
                               log_file=self.log_file)

    async def run(self) -> None:
        if self.console.is_terminal:
            await self._run_live()
        else:
            await self._run_logs()

    async def _run_live(self) -> None:
        with contextlib.ExitStack() as stack:
            if self.log_file is not None:
                try:
                    stack.enter_context(logs_to_file(self.log_file))
                except OSError as exc:  # an unwritable state dir must not stop the run
                    _log.warning("live_log_unavailable", path=str(self.log_file),
                                 error=str(exc))
                    self.log_file = None
            live = stack.enter_context(Live(
                self.render(), console=self.console, auto_refresh=False, transient=False,
                redirect_stderr=self.log_file is None, redirect_stdout=False))
            await self._draw(live)

    async def _draw(self, live: Live) -> None:
        try:
            pause = self.refresh_s
            while True:
                await anyio.sleep(pause)
                start = self._clock()
                live.update(self.render(), refresh=True)
                self.frames += 1
                # keep drawing under ~10 % of the loop, however many tasks there are
                pause = max(self.refresh_s, 9 * (self._clock() - start))
        finally:
            # the last frame shows how every task ended
            live.update(self.render(), refresh=True)
            self.frames += 1

    async def _run_logs(self) -> None:
        try:
            while True:
                await anyio.sleep(self.log_every_s)
                _log.info("live_status", **summary_fields(self.snapshot()))
                self.frames += 1
        finally:
            _log.info("live_status", final=True, **summary_fields(self.snapshot()))
            self.frames += 1
