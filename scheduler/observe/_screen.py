"""One screen of the live view (and of ``vibe-engine status``), sized to the terminal.

:func:`render_snapshot` lays a :class:`~scheduler.observe._snapshot.Snapshot` out
as plain lines: a head line, then the sections **Agents**, **Budgets**, **Leases and
pools** beside **Model health**, and **Recent events**.  Every line is at most the
screen's width (figures are abbreviated by :mod:`scheduler.observe._text`, columns
that do not fit are left out whole), so nothing wraps and no number is cut.  With a
``height`` the sections share it: the agent list shows the tasks that need
attention first and sums the rest up in one line ("and 20 more: 15 running, …"),
budgets show the hottest bars first; the whole stays one line short of the screen,
so rich's live display never collapses a section to ``...``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from scheduler.observe._snapshot import STATES, BudgetBar, Snapshot, TaskView
from scheduler.observe._text import amount, bar, clip, count, money, percent, when

__all__ = ["SECTIONS", "render_snapshot"]

#: The section headers, top to bottom (the acceptance test looks for each).
SECTIONS = ("Agents", "Budgets", "Leases and pools", "Model health", "Recent events")

STATE_STYLE = {
    "running": "cyan", "waiting": "yellow", "paused": "magenta", "deferred": "blue",
    "broken_down": "cyan", "pending": "dim", "requeued": "yellow", "completed": "green",
    "finished": "green", "failed": "red", "interrupted": "magenta",
}
LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "red", "exceeded": "bold red"}
EVENT_STYLE = {"info": "white", "warning": "yellow", "error": "red", "critical": "bold red"}
HEALTH_STYLE = {"available": "green", "recovering": "yellow", "unavailable": "red"}
_PRIO = {"critical_path": "crit", "user_waiting": "user", "normal": "norm", "background": "bg"}
_DIM = {"tokens": "tokens", "cost_usd": "cost", "time_s": "time", "call_time_s": "call time",
        "prompt_tokens": "prompt", "completion_tokens": "output", "cache_read_tokens": "cache rd",
        "cache_write_tokens": "cache wr", "file_edits": "edits", "shell_commands": "shell",
        "dangerous_commands": "danger", "cost_warning_usd": "cost warn"}
#: Routine events the panel leaves out, so alerts, deadlock victims and routing changes stay
#: visible (they are all in the structured log and in ``status --json``).
QUIET_EVENTS = frozenset({"task_completed", "control_listening", "metrics_listening"})
#: Row order: what needs a person's attention first, then active work, then the ended.
_ROW_ORDER = {s: i for i, s in enumerate((
    "paused", "interrupted", "deferred", "running", "waiting", "broken_down", "requeued",
    "pending", "failed", "finished", "completed"))}
#: Paused tasks that get their answer line; the others are counted in the summary.
_ANSWERS = 3
_GAP = 2


Cell = tuple[str, str]  # text, style


@dataclass(frozen=True, slots=True)
class _Col:
    name: str
    right: bool = False
    cap: int = 20


def _line(*parts: Cell) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for s, style in parts:
        text.append(s, style=style or None)
    return text


def _title(name: str, detail: str, width: int) -> Text:
    rest = clip(detail, width - len(name) - 3) if detail else ""
    return _line((name, "bold"), ((" — " + rest) if rest else "", "dim"))


def _grid(cols: Sequence[_Col], rows: Sequence[Sequence[Cell]], width: int,
          drop: Sequence[str] = ()) -> list[Text]:
    """Fixed-width columns (header first); columns in ``drop`` go, in order, until the
    lines fit ``width``; the last column takes what is left, clipped at a word."""
    keep = list(range(len(cols)))
    widths = [max([len(c.name), *(cell_len(r[i][0]) for r in rows)]) for i, c in enumerate(cols)]
    widths = [min(w, c.cap) for w, c in zip(widths, cols, strict=True)]
    # the last column only needs room for a few words; it gets the rest below
    widths[-1] = min(widths[-1], 12)

    def total() -> int:
        return sum(widths[i] for i in keep) + (len(keep) - 1)

    for name in drop:
        if total() <= width:
            break
        keep = [i for i in keep if cols[i].name != name]
    last = keep[-1]
    widths[last] = max(0, width - (total() - widths[last]))

    def fmt(i: int, cell: Cell) -> Cell:
        s = clip(cell[0], widths[i])
        pad = " " * (widths[i] - cell_len(s))
        return (pad + s if cols[i].right else s + pad), cell[1]

    out = [_line(*[p for i in keep for p in (fmt(i, (cols[i].name, "dim")), (" ", ""))])]
    out += [_line(*[p for i in keep for p in (fmt(i, row[i]), (" ", ""))]) for row in rows]
    for t in out:
        t.rstrip()
    return out


def _state(t: TaskView) -> str:
    if t.status == "waiting" and t.queue_position is not None:
        wait = t.estimated_wait_s
        eta = "" if wait is None else f", ~{wait:.1f}s" if wait < 10 else f", ~{wait:.0f}s"
        return f"waiting #{t.queue_position}{eta}"
    return t.status


def _rank(tasks: Sequence[TaskView]) -> list[TaskView]:
    """Attention first; busy running tasks before idle ones; the queue in its order."""
    return sorted(tasks, key=lambda t: (_ROW_ORDER.get(t.status, 99), -t.tokens
                                        if t.status == "running" else t.queue_position or 0,
                                        t.task_id))


def _task_row(t: TaskView) -> list[Cell]:
    frac = t.budget_fraction
    level = "ok" if frac < 0.7 else "warning" if frac < 0.9 else "critical"
    note = t.reason if t.status not in ("completed", "finished") else ""
    return [(t.task_id, "bold" if t.status == "paused" else ""), (t.agent, ""),
            (_PRIO.get(t.priority, t.priority), ""), (_state(t), STATE_STYLE.get(t.status, "")),
            (t.model or "-", ""), (count(t.tokens), ""), (money(t.cost_usd), ""),
            (f"{bar(frac, 5)} {percent(frac):>4}", LEVEL_STYLE[level]), (note, "dim")]


_AGENT_COLS = (_Col("task", cap=14), _Col("agent", cap=9), _Col("prio", cap=5),
               _Col("state", cap=20), _Col("model", cap=10), _Col("tokens", True, 6),
               _Col("cost", True, 7), _Col("budget", cap=10), _Col("note", cap=80))


def _answer_lines(answer: str, width: int) -> list[str]:
    """The answer command in lines of at most ``width`` (``↳ `` first, then indented),
    broken between words so it can be copied whole."""
    lines, current = [], "↳"
    for word in answer.split(" "):
        if cell_len(current) + 1 + cell_len(word) > width and current.strip() != "↳":
            lines.append(current)
            current = "   "
        current = f"{current} {word}"
    return [*lines, current]


def _agents(snap: Snapshot, width: int, room: int | None) -> list[Text]:
    """Title, header, task rows (answer lines under paused ones), and the summary line;
    at most ``room`` lines after the header."""
    counts = snap.counts()
    detail = " · ".join(f"{s} {counts[s]}" for s in STATES if counts.get(s))
    ranked = _rank(snap.tasks)
    shown: list[TaskView] = []
    used, answers = 0, 0
    for i, t in enumerate(ranked):
        cost = 1 + (len(_answer_lines(t.answer, width)) if t.answer and answers < _ANSWERS
                    else 0)
        left = len(ranked) - i - 1
        if room is not None and used + cost + (1 if left else 0) > room:
            break
        shown.append(t)
        used += cost
        answers += cost > 1
    lines = [_title("Agents", detail or "no tasks", width)]
    rows = [_task_row(t) for t in shown]
    grid = _grid(_AGENT_COLS, rows, width, drop=("note", "agent", "prio", "model", "cost"))
    lines.append(grid[0])
    answers = 0
    for t, row in zip(shown, grid[1:], strict=True):
        lines.append(row)
        if t.answer and answers < _ANSWERS:
            answers += 1
            lines += [_line((a, "bold magenta")) for a in _answer_lines(t.answer, width)]
    hidden = ranked[len(shown):]
    if hidden:
        rest: dict[str, int] = {}
        for t in hidden:
            rest[t.status] = rest.get(t.status, 0) + 1
        parts = ", ".join(f"{n} {s}" for s, n in sorted(
            rest.items(), key=lambda kv: _ROW_ORDER.get(kv[0], 99)))
        lines.append(_line((clip(f"  and {len(hidden)} more: {parts}", width), "dim")))
    return lines


def _scope_label(b: BudgetBar) -> str:
    kind, _, name = b.scope.partition(":")
    scope = kind if kind in ("session", "day") else name or kind
    dim = b.dimension.split(":", 1)[1] if b.dimension.startswith("tokens:") else _DIM.get(
        b.dimension, b.dimension)
    return f"{scope} {dim}"


def _budget_order(bars: Sequence[BudgetBar]) -> list[BudgetBar]:
    """Session and day bars in their order, then the hottest task bars."""
    shared = [b for b in bars if b.scope.startswith(("session:", "day:"))]
    tasks = sorted((b for b in bars if b not in shared), key=lambda b: -b.fraction)
    return [*shared, *tasks]


def _budgets(snap: Snapshot, width: int, max_lines: int | None) -> list[Text]:
    bars = _budget_order(snap.budgets)
    if not bars:
        return [_title("Budgets", "no limited dimension", width)]
    labels = [_scope_label(b) for b in bars]
    figures = [f"{amount(b.used, b.dimension)}/{amount(b.limit, b.dimension)}" for b in bars]
    lw, fw = min(max(map(len, labels)), 16), max(map(len, figures))
    base = lw + fw + 7  # three spaces and "104%"
    per_line, bar_w = 1, max(4, min(20, width - base))
    for n in (4, 3, 2):
        w = (width - _GAP * (n - 1)) // n - base
        if w >= 4 and len(bars) > n - 1:
            per_line, bar_w = n, min(w, 20)
            break
    lines_needed = -(-len(bars) // per_line)
    n_lines = lines_needed if max_lines is None else max(1, min(lines_needed, max_lines))
    shown = bars[: n_lines * per_line]
    left_out = len(bars) - len(shown)
    detail = f"{len(shown)} of {len(bars)} shown" if left_out else ""
    out = [_title("Budgets", detail, width)]
    for row in range(n_lines):
        parts: list[Cell] = []
        for j, b in enumerate(shown[row * per_line:(row + 1) * per_line]):
            k = row * per_line + j
            style = LEVEL_STYLE.get(b.level, "")
            parts += [(" " * _GAP if j else "", ""), (clip(labels[k], lw).ljust(lw) + " ", ""),
                      (bar(b.fraction, bar_w), style), (f" {percent(b.fraction):>4} ", style),
                      (figures[k].ljust(fw), "")]
        out.append(_line(*parts))
        out[-1].rstrip()
    return out


def _pool_lines(snap: Snapshot) -> list[Text]:
    if not snap.pools:
        return [_line(("no pools", "dim"))]
    out = []
    for p in snap.pools:
        calls = f"{p.calls_in_use}" + (f"/{p.concurrent}" if p.concurrent else "")
        out.append(_line((clip(p.name, 12), "bold"),
                         (f" {calls} calls, {count(p.waiting)} waiting", "")))
        out.append(_line((f"  {count(p.leases)} leases ({count(p.expired)} expired)", "")))
        free = "" if p.tokens_available is None else ", " + count(p.tokens_available) + (
            f"/{count(p.tokens_per_minute)}" if p.tokens_per_minute else "") + " free"
        out.append(_line((f"  {count(p.grants)} grants{free}", "")))
    return out


def _model_lines(snap: Snapshot) -> list[Text]:
    if not snap.models:
        return [_line(("no health data", "dim"))]
    mw = min(max(len(m.model) for m in snap.models), 12)
    sw = max(len(m.state) for m in snap.models)
    cw = max(len(count(m.calls)) for m in snap.models)
    out = []
    for m in snap.models:
        # a model nobody called has no rate to show (a 100 % would claim calls succeeded)
        success = f"{m.success_rate:.0%} ok" if m.calls else "–"
        latency = "–" if not m.calls else (f"{m.mean_latency_s:.2f}s"
                                          if m.mean_latency_s < 10 else
                                          f"{m.mean_latency_s:.0f}s")
        out.append(_line((clip(m.model, mw).ljust(mw) + " ", "bold"),
                         (m.state.ljust(sw), HEALTH_STYLE.get(m.state, "")),
                         (f" {count(m.calls):>{cw}} calls {success:>7} {latency:>5}", "")))
    return out


def _side_by_side(left: list[Text], right: list[Text], width: int,
                  max_lines: int | None) -> list[Text]:
    """Pools beside model health when both fit; else one above the other."""
    lw = max([len("Leases and pools"), *(cell_len(t.plain) for t in left)])
    rw = max([len("Model health"), *(cell_len(t.plain) for t in right)])
    n = max(len(left), len(right)) if max_lines is None else min(
        max(len(left), len(right)), max_lines)
    if lw + _GAP + rw <= width:
        head = _line(("Leases and pools".ljust(lw + _GAP), "bold"), ("Model health", "bold"))
        out = [head]
        for i in range(n):
            a = left[i] if i < len(left) else Text()
            b = right[i] if i < len(right) else Text()
            line = a.copy()
            line.append(" " * (lw + _GAP - cell_len(a.plain)))
            line.append_text(b)
            out.append(line)
        return out
    return [_line(("Leases and pools", "bold")), *left[:max_lines],
            _line(("Model health", "bold")), *right[:max_lines]]


def _event_time(snap: Snapshot, at: float, wall: float, clock_times: bool) -> str:
    if snap.source == "store":
        return when(at, wall=wall)
    if clock_times and snap.written_at:
        try:
            written = datetime.fromisoformat(snap.written_at).timestamp()
        except ValueError:
            written = 0.0
        if written:
            return when(at, wall=written - (snap.at - at))
    return when(at, now=snap.at)


def _events(snap: Snapshot, width: int, n: int, clock_times: bool,
            log_file: Path | None) -> list[Text]:
    notable = [e for e in snap.events if e.name not in QUIET_EVENTS][-n:] if n else []
    logs = f"log lines: {log_file}" if log_file is not None else ""
    title = _line(("Recent events", "bold"))
    if logs and len("Recent events") + 2 + len(logs) <= width:
        title.append(" " * (width - len("Recent events") - len(logs)) + logs, style="dim")
    out = [title]
    if not notable:
        return [*out, _line(("no events yet", "dim"))]
    times = [_event_time(snap, e.at, e.wall, clock_times) for e in notable]
    tw, nw = max(map(len, times)), min(max(len(e.name) for e in notable), 18)
    for e, t in zip(notable, times, strict=True):
        room = width - tw - nw - 2
        out.append(_line((t.rjust(tw) + " ", "dim"),
                         (clip(e.name, nw).ljust(nw) + " ", EVENT_STYLE.get(e.level, "")),
                         (clip(_about(e.task_id, e.message), room), "")))
    return out


def _about(task_id: str | None, message: str) -> str:
    """An event's message, led by its task's id when it does not name it already
    (``saved and finished (timeout)``, ``budget at 70 %…``), so each line says whose."""
    if not task_id or re.search(rf"(?<![\w/-]){re.escape(task_id)}(?![\w/-])", message):
        return message
    return f"{task_id}: {message}"


def _head(snap: Snapshot, width: int) -> Text:
    total = snap.totals
    where = "from the store" if snap.source == "store" else (
        "running" if snap.running else "ended")
    tokens, calls = int(total.get("tokens", 0)), int(total.get("calls", 0))
    cost = money(float(total.get("cost_usd", 0)))
    right = f"{count(tokens)} tokens · {cost} · {count(calls)} calls"
    for left in (f"vibe-engine · session {snap.session_id or '-'} · {where}",
                 f"session {snap.session_id or '-'} · {where}", f"{snap.session_id} {where}"):
        if len(left) + 2 + len(right) <= width:
            return _line((left, "bold"), (" " * (width - len(left) - len(right)), ""),
                         (right, ""))
    return _line((clip(right, width), ""))


def render_snapshot(snap: Snapshot, height: int | None = None, width: int = 100, *,
                    clock_times: bool = False, log_file: Path | None = None,
                    max_tasks: int = 40) -> RenderableType:
    """The whole screen for one snapshot, at most ``width`` columns and, with ``height``,
    ``height - 1`` lines (the sections share them; see the module docstring).

    ``clock_times`` shows event times as clock times instead of "6 s ago";
    ``log_file`` is named in the events header (where log lines go meanwhile).
    """
    width = max(width, 40)
    notable = sum(1 for e in snap.events if e.name not in QUIET_EVENTS)
    if height is None:
        budgets = _budgets(snap, width, None)
        pm = _side_by_side(_pool_lines(snap), _model_lines(snap), width, None)
        agents = _agents(snap, width, max_tasks + 1 + _ANSWERS)
        events = _events(snap, width, 8, clock_times, log_file)
        return Group(_head(snap, width), *agents, *budgets, *pm, *events)
    lines = height - 1
    budgets = _budgets(snap, width, max(2, lines // 7))
    pm = _side_by_side(_pool_lines(snap), _model_lines(snap), width,
                       max(3, lines // 7))
    fixed = 1 + 2 + len(budgets) + len(pm) + 1
    n_events = min(max(1, notable), 3 if lines < 40 else 6)
    room = max(2, lines - fixed - n_events)
    agents = _agents(snap, width, room)
    spare = lines - fixed - (len(agents) - 2) - n_events
    n_events = min(max(1, notable), n_events + max(0, spare), 10)
    events = _events(snap, width, n_events, clock_times, log_file)
    return Group(_head(snap, width), *agents, *budgets, *pm, *events)
