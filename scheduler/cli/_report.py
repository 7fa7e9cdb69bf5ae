"""``vibe-engine report``: what was spent, over a store and a date range.

:func:`gather_report` reads the store's usage events (``day_from`` ..
``day_to``, inclusive) and its ``history`` records (the events every
orchestrator persists, see :mod:`scheduler.observe._observers`) into a
:class:`ReportData`: cost and tokens per day, per model, per task type and per
agent, budget use per task, and the alert, deadlock and routing/health
history.  :func:`render_report_tables` prints it with rich;
:func:`write_html_report` writes one self-contained HTML file with inline SVG
charts (see :mod:`scheduler.cli._report_html`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scheduler.budget import read_usage_file
from scheduler.config import Limits, VibeConfig
from scheduler.core import ConfigError, Totals, UsageEvent
from scheduler.store import Store

__all__ = [
    "HistoryRow", "ReportData", "Row", "TaskUse", "classify_history", "gather_report",
    "render_report_tables", "report_span",
]


@dataclass(frozen=True, slots=True)
class Row:
    """Tokens, cost and calls of one group (a day, model, task type or agent)."""

    key: str
    tokens: int
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    calls: int

    @classmethod
    def of(cls, key: str, t: Totals) -> Row:
        return cls(key, t.tokens, t.prompt_tokens, t.completion_tokens, t.cache_read_tokens,
                   t.cache_write_tokens, t.cost_usd, t.calls)


@dataclass(frozen=True, slots=True)
class TaskUse:
    """Budget use of one task: the larger of its token and cost fractions."""

    task_id: str
    task_type: str
    agent: str
    tokens: int
    cost_usd: float
    token_limit: int | None
    cost_limit: float | None
    calls: int = 0
    #: The task's last status (its ``usage.json``), "" when unknown.
    status: str = ""
    #: The absolute path of ``<state_dir>/tasks/<id>/result.json``, if the task left one.
    result: str | None = None

    @property
    def fraction(self) -> float:
        fracs = [0.0]
        if self.token_limit:
            fracs.append(self.tokens / self.token_limit)
        if self.cost_limit:
            fracs.append(self.cost_usd / self.cost_limit)
        return max(fracs)


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One persisted runtime event."""

    day: str
    wall: float
    session_id: str
    name: str
    level: str
    task_id: str
    message: str


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything ``report`` shows (plain data)."""

    day_from: str | None
    day_to: str | None
    total: Row
    by_day: tuple[Row, ...]
    by_model: tuple[Row, ...]
    by_task_type: tuple[Row, ...]
    by_agent: tuple[Row, ...]
    cost_by_day_model: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: Cost per local hour (``YYYY-MM-DD HH``) and model: the time axis of a one-day report.
    cost_by_hour_model: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    tasks: tuple[TaskUse, ...] = ()
    alerts: tuple[HistoryRow, ...] = ()
    deadlocks: tuple[HistoryRow, ...] = ()
    routing: tuple[HistoryRow, ...] = ()


def _group(events: list[UsageEvent], key: str) -> tuple[Row, ...]:
    groups: dict[str, Totals] = {}
    for e in events:
        groups.setdefault(getattr(e, key) or "-", Totals()).add(e)
    return tuple(Row.of(k, t) for k, t in sorted(groups.items()))


def classify_history(name: str, message: str = "") -> str | None:
    """``alerts``, ``deadlocks``, ``routing`` or ``None`` for an event name."""
    if "deadlock" in name or "deadlock" in message.lower():
        return "deadlocks"
    if name.startswith(("budget_", "alert", "overdraft", "pause", "decision")) or name in (
        "task_paused", "checkpoint_requested", "task_review", "open_call_charged",
        "open_call_estimate_replaced", "usage_estimated"):
        return "alerts"
    if name.startswith(("model_", "routing", "health")) or name in (
        "task_deferred", "task_resumed", "task_simplified", "task_decomposed"):
        return "routing"
    return None


def _hour(at: float, day: str) -> str:
    """The local hour of a wall-clock timestamp (days are local days, SystemWallClock),
    within ``day``, the day the event counts toward: a call admitted before midnight and
    settled after is in its day's last hour, as the day's budget counts it (and one whose
    day was kept though the wall clock was set back, in the day's first)."""
    hour = datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H")
    if hour.startswith(day):
        return hour
    return f"{day} 23" if hour > day else f"{day} 00"


def _in_range(day: str, day_from: str | None, day_to: str | None) -> bool:
    return (day_from is None or day >= day_from) and (day_to is None or day <= day_to)


def _check_day(name: str, value: str | None) -> None:
    if value is None:
        return
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ConfigError(name, value, "expected a day as YYYY-MM-DD") from None


async def _history(store: Store, day_from: str | None,
                   day_to: str | None) -> dict[str, list[HistoryRow]]:
    out: dict[str, list[HistoryRow]] = {"alerts": [], "deadlocks": [], "routing": []}
    records = sorted((await store.list_state("history")).values(),
                     key=lambda r: (float(r.get("wall", 0.0)), int(r.get("seq", 0))))
    for r in records:
        day, name = str(r.get("day", "")), str(r.get("name", ""))
        kind = classify_history(name, str(r.get("message", "")))
        if kind is None or not _in_range(day, day_from, day_to):
            continue
        out[kind].append(HistoryRow(day, float(r.get("wall", 0.0)), str(r.get("session_id", "")),
                                    name, str(r.get("level", "info")),
                                    str(r.get("task_id") or ""), str(r.get("message", ""))))
    return out


def _task_limits(state_dir: Path | None, task_id: str, task_type: str,
                 config: VibeConfig) -> tuple[int | None, float | None, str]:
    """The task's token and cost limits and its last status (from ``usage.json``)."""
    doc = None if state_dir is None else read_usage_file(
        state_dir / "tasks" / task_id / "usage.json")
    if doc is not None:
        try:
            limits = Limits.model_validate(doc.get("budget", {}))
            return limits.tokens, limits.cost_usd, str(doc.get("status") or "")
        except ValueError:
            pass
    row = config.task_types.get(task_type)  # type: ignore[call-overload]
    return (row.tokens, row.cost_usd, "") if row is not None else (None, None, "")


def _result_file(state_dir: Path | None, task_id: str) -> str | None:
    if state_dir is None:
        return None
    path = state_dir / "tasks" / task_id / "result.json"
    return str(path.resolve()) if path.is_file() else None


def _task_uses(events: list[UsageEvent], state_dir: Path | None,
               config: VibeConfig) -> tuple[TaskUse, ...]:
    per: dict[str, Totals] = {}
    meta: dict[str, tuple[str, str]] = {}
    for e in events:
        per.setdefault(e.task_id, Totals()).add(e)
        meta.setdefault(e.task_id, (e.task_type, e.agent))
    out = []
    for tid in sorted(per):
        ttype, agent = meta[tid]
        tok_lim, cost_lim, status = _task_limits(state_dir, tid, ttype, config)
        out.append(TaskUse(tid, ttype, agent, per[tid].tokens, per[tid].cost_usd, tok_lim,
                           cost_lim, per[tid].calls, status, _result_file(state_dir, tid)))
    return tuple(out)


async def gather_report(
    store: Store, *, day_from: str | None = None, day_to: str | None = None,
    state_dir: Path | None = None, config: VibeConfig | None = None,
) -> ReportData:
    """Aggregate the store's usage and history between two days (inclusive)."""
    _check_day("--from", day_from)
    _check_day("--to", day_to)
    if day_from is not None and day_to is not None and day_from > day_to:
        # an empty report would read as "nothing was spent" rather than as a typo
        raise ConfigError("--from", day_from, f"is after --to {day_to}")
    config = config or VibeConfig()
    events = await store.events(day_from=day_from, day_to=day_to)
    total = Totals()
    cost_map: dict[str, dict[str, float]] = {}
    hour_map: dict[str, dict[str, float]] = {}
    for e in events:
        total.add(e)
        if e.model:
            models = cost_map.setdefault(e.day, {})
            models[e.model] = models.get(e.model, 0.0) + e.cost_usd
            hour = hour_map.setdefault(_hour(e.at, e.day), {})
            hour[e.model] = hour.get(e.model, 0.0) + e.cost_usd
    history = await _history(store, day_from, day_to)
    return ReportData(
        day_from=day_from, day_to=day_to, total=Row.of("total", total),
        by_day=_group(events, "day"), by_model=_group([e for e in events if e.model], "model"),
        by_task_type=_group(events, "task_type"), by_agent=_group(events, "agent"),
        cost_by_day_model=cost_map, cost_by_hour_model=hour_map,
        tasks=_task_uses(events, state_dir, config),
        alerts=tuple(history["alerts"]), deadlocks=tuple(history["deadlocks"]),
        routing=tuple(history["routing"]),
    )


def _usage_table(title: str, rows: tuple[Row, ...], total: Row | None = None) -> Table:
    table = Table(title=title)
    for col in (title.split()[-1], "calls", "tokens", "prompt", "completion", "cache read",
                "cache write", "cost $"):
        table.add_column(col, justify="left" if col == title.split()[-1] else "right")
    for r in (*rows, *((total,) if total else ())):
        table.add_row(r.key, str(r.calls), f"{r.tokens:,}", f"{r.prompt_tokens:,}",
                      f"{r.completion_tokens:,}", f"{r.cache_read_tokens:,}",
                      f"{r.cache_write_tokens:,}", f"{r.cost_usd:.6f}")
    return table


def _total_of(rows: tuple[Row, ...]) -> Row:
    """The sum of a table's rows (per model it leaves out usage no model made)."""
    return Row("total", *(sum(getattr(r, f) for r in rows) for f in (
        "tokens", "prompt_tokens", "completion_tokens", "cache_read_tokens",
        "cache_write_tokens", "cost_usd", "calls")))


def _history_table(title: str, rows: tuple[HistoryRow, ...]) -> Table:
    table = Table(title=f"{title} ({len(rows)})")
    for col in ("day", "event", "task", "message"):
        table.add_column(col)
    for h in rows[-50:]:
        table.add_row(h.day, h.name, h.task_id, h.message)
    return table


def report_span(data: ReportData) -> str:
    """The days the report covers, from its first to its last recorded event (usage or
    history), e.g. ``2026-11-30 .. 2026-12-02 (3 days)``; the range asked for with
    ``--from``/``--to`` is added when given."""
    days = sorted({r.key for r in data.by_day if r.key != "-"}
                  | {h.day for h in (*data.alerts, *data.deadlocks, *data.routing) if h.day})
    if not days:
        span = "nothing recorded"
    elif days[0] == days[-1]:
        span = days[0]
    else:
        count = (date.fromisoformat(days[-1]) - date.fromisoformat(days[0])).days + 1
        span = f"{days[0]} .. {days[-1]} ({count} days)"
    if data.day_from or data.day_to:
        span += f" (asked: {data.day_from or 'first'} .. {data.day_to or 'last'})"
    return span


def render_report_tables(data: ReportData, console: Console) -> None:
    """The report as rich tables."""
    console.print(f"[bold]vibe-engine report[/bold] {escape(report_span(data))}")
    console.print(_usage_table("Cost and tokens per day", data.by_day, data.total))
    for title, rows in (("Cost and tokens per model", data.by_model),
                        ("Cost and tokens per task type", data.by_task_type),
                        ("Cost and tokens per agent", data.by_agent)):
        console.print(_usage_table(title, rows, _total_of(rows)))
    console.print(_history_table("Alert history", data.alerts))
    console.print(_history_table("Deadlock history", data.deadlocks))
    console.print(_history_table("Routing and health changes", data.routing))


