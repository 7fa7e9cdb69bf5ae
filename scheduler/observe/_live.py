"""The live terminal view of ``vibe-engine run`` and ``demo`` (rich).

:func:`render_snapshot` turns a :class:`~scheduler.observe._snapshot.Snapshot` into
rich renderables: agents and their state (running / waiting with queue
position and estimated wait / paused / deferred …), budget bars per scope in
alert colours (green below 70 %, yellow to 90 %, red above), leases and pool
use, model health and the recent notable events.  :class:`LiveView` is an
orchestrator *service* that refreshes it a few times per second; when the
console is not a terminal it writes one structured log line per refresh
period instead (``live_status``), so CI logs stay readable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from scheduler.core import get_logger
from scheduler.observe._snapshot import STATES, Snapshot
from scheduler.observe._view import RunView, snapshot_of

__all__ = ["LiveView", "render_snapshot", "summary_fields"]

_log = get_logger("vibe_engine.live")

STATE_STYLE = {
    "running": "cyan", "waiting": "yellow", "paused": "magenta", "deferred": "blue",
    "broken_down": "cyan", "pending": "dim", "requeued": "yellow", "completed": "green",
    "finished": "green", "failed": "red", "interrupted": "magenta",
}
LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "red", "exceeded": "bold red"}
EVENT_STYLE = {"info": "white", "warning": "yellow", "error": "red", "critical": "bold red"}
HEALTH_STYLE = {"available": "green", "recovering": "yellow", "unavailable": "red"}
_BAR = 24


def bar(fraction: float, width: int = _BAR) -> str:
    """A text bar: ``█`` for the used part, ``░`` for the rest (capped at full)."""
    full = min(max(fraction, 0.0), 1.0)
    n = round(full * width)
    return "█" * n + "░" * (width - n)


def _fmt(value: float, dimension: str) -> str:
    if dimension.startswith("cost"):
        return f"${value:.4f}"
    if dimension.startswith("time"):
        return f"{value:.0f}s"
    return f"{value:,.0f}"


def _state_text(t: Any) -> Text:
    label = t.status
    if t.status == "waiting" and t.queue_position is not None:
        wait = "" if t.estimated_wait_s is None else f", ~{t.estimated_wait_s:.1f}s"
        label = f"waiting #{t.queue_position}{wait}"
    return Text(label, style=STATE_STYLE.get(t.status, "white"))


#: Row order: what needs a person's attention first, then active work, then the ended.
_ROW_ORDER = {s: i for i, s in enumerate((
    "paused", "interrupted", "deferred", "running", "waiting", "broken_down", "requeued",
    "pending", "failed", "finished", "completed"))}


def agents_table(snap: Snapshot, max_rows: int = 40) -> Table:
    """Tasks, those needing attention first; at most ``max_rows`` rows plus a "… more" line."""
    counts = snap.counts()
    summary = "  ".join(f"{s} {counts[s]}" for s in STATES if counts.get(s))
    table = Table(title=f"Agents — {summary}", expand=True, title_justify="left")
    for col, just in (("task", "left"), ("agent", "left"), ("prio", "left"), ("state", "left"),
                      ("model", "left"), ("tokens", "right"), ("cost $", "right"),
                      ("budget", "left"), ("note", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    ranked = sorted(snap.tasks, key=lambda t: (_ROW_ORDER.get(t.status, 99), t.task_id))
    for t in ranked[:max_rows]:
        level = "ok" if t.budget_fraction < 0.7 else "warning" if t.budget_fraction < 0.9 else (
            "critical")
        table.add_row(
            t.task_id, t.agent, t.priority, _state_text(t), t.model or "-", f"{t.tokens:,}",
            f"{t.cost_usd:.4f}",
            Text(f"{bar(t.budget_fraction, 10)} {t.budget_fraction:4.0%}",
                 style=LEVEL_STYLE[level]),
            Text(t.reason[:40], style="dim") if t.status != "completed" else "",
        )
    if len(ranked) > max_rows:
        table.add_row("…", f"{len(ranked) - max_rows} more", "", "", "", "", "", "", "")
    return table


def budgets_table(snap: Snapshot) -> Table:
    table = Table(title="Budgets", expand=True, title_justify="left")
    for col in ("scope", "dimension", "use", "used / limit", "level"):
        table.add_column(col)
    for b in snap.budgets:
        style = LEVEL_STYLE.get(b.level, "white")
        table.add_row(b.scope, b.dimension,
                      Text(f"{bar(b.fraction)} {b.fraction:4.0%}", style=style),
                      f"{_fmt(b.used, b.dimension)} / {_fmt(b.limit, b.dimension)}",
                      Text(b.level, style=style))
    return table


def pools_table(snap: Snapshot) -> Table:
    table = Table(title="Leases and pools", expand=True, title_justify="left")
    for col in ("pool", "leases", "waiting", "calls in use", "tokens free", "grants", "expired"):
        table.add_column(col)
    if not snap.pools:
        table.add_row("-", "-", "-", "-", "-", "-", "-")
    for p in snap.pools:
        calls = f"{p.calls_in_use}" + (f" / {p.concurrent}" if p.concurrent else "")
        free = "-" if p.tokens_available is None else (
            f"{p.tokens_available:,.0f}"
            + (f" / {p.tokens_per_minute:,}" if p.tokens_per_minute else ""))
        table.add_row(p.name, str(p.leases), str(p.waiting), calls, free, str(p.grants),
                      str(p.expired))
    return table


def models_table(snap: Snapshot) -> Table:
    table = Table(title="Model health", expand=True, title_justify="left")
    for col in ("model", "state", "calls", "success", "errors", "latency"):
        table.add_column(col)
    if not snap.models:
        table.add_row("-", "no health data", "-", "-", "-", "-")
    for m in snap.models:
        table.add_row(m.model, Text(m.state, style=HEALTH_STYLE.get(m.state, "white")),
                      str(m.calls), f"{m.success_rate:.0%}", f"{m.error_rate:.0%}",
                      f"{m.mean_latency_s:.2f}s")
    return table


#: Routine events the panel leaves out, so alerts, deadlock victims and routing changes stay
#: visible (they are all in the structured log and in ``status --json``).
QUIET_EVENTS = frozenset({"task_completed", "control_listening", "metrics_listening"})


def events_panel(snap: Snapshot, limit: int = 8) -> Panel:
    """The last notable events (see :data:`QUIET_EVENTS`)."""
    lines = Text()
    notable = [e for e in snap.events if e.name not in QUIET_EVENTS]
    for e in notable[-limit:]:
        when = (datetime.fromtimestamp(e.wall).strftime("%H:%M:%S") if snap.source == "store"
                else f"{e.at - snap.at:+7.1f}s")
        lines.append(f"{when} ", style="dim")
        lines.append(f"{e.name:<18} ", style=EVENT_STYLE.get(e.level, "white"))
        lines.append(f"{e.message}\n")
    return Panel(lines or Text("no events yet", style="dim"), title="Recent events")


def agent_rows_fitting(snap: Snapshot, height: int | None, events: int = 8) -> int:
    """How many task rows fit a screen of ``height`` lines beside the other panels."""
    if height is None:
        return 40
    notable = sum(1 for e in snap.events if e.name not in QUIET_EVENTS)
    others = (1 + (len(snap.budgets) + 4) + (max(1, len(snap.pools)) + 4)
              + (max(1, len(snap.models)) + 4) + (max(1, min(events, notable)) + 2) + 6)
    return max(3, height - others)


def render_snapshot(snap: Snapshot, height: int | None = None) -> RenderableType:
    """The whole screen for one snapshot; with ``height`` the task rows are cut to fit."""
    total = snap.totals
    where = "from the store, no orchestrator running" if snap.source == "store" else (
        "running" if snap.running else "ended")
    head = Text(
        f"vibe-engine — session {snap.session_id or '-'} ({where})  "
        f"tokens {int(total.get('tokens', 0)):,}  cost ${float(total.get('cost_usd', 0)):.4f}  "
        f"calls {int(total.get('calls', 0))}", style="bold")
    return Group(head, agents_table(snap, agent_rows_fitting(snap, height)), budgets_table(snap),
                 pools_table(snap), models_table(snap), events_panel(snap))


def summary_fields(snap: Snapshot) -> dict[str, Any]:
    """The facts of a snapshot as flat log fields (the non-TTY view)."""
    fields: dict[str, Any] = {f"n_{s}": n for s, n in sorted(snap.counts().items())}
    fields["tokens"] = snap.totals.get("tokens", 0)
    fields["cost_usd"] = snap.totals.get("cost_usd", 0.0)
    waiting = [t for t in snap.tasks if t.status == "waiting"]
    if waiting:
        fields["waiting"] = {t.task_id: t.queue_position for t in waiting}
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
    ) -> None:
        self.view = view
        self.console = console
        self.refresh_s = refresh_s
        self.log_every_s = log_every_s
        self._clock = clock
        self.frames = 0

    def snapshot(self) -> Snapshot:
        return snapshot_of(self.view, now=self._clock())

    def render(self) -> RenderableType:
        return render_snapshot(self.snapshot(), height=self.console.size.height)

    async def run(self) -> None:
        if self.console.is_terminal:
            await self._run_live()
        else:
            await self._run_logs()

    async def _run_live(self) -> None:
        with Live(self.render(), console=self.console, auto_refresh=False,
                  transient=False, redirect_stderr=True, redirect_stdout=False) as live:
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
