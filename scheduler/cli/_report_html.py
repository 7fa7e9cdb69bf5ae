"""The HTML form of ``vibe-engine report``: one self-contained file, inline SVG charts.

No script, no external stylesheet, font or image: the file opens offline in
any browser (the test suite opens it in headless Chromium, at desktop and phone
width: charts scale down with their ``viewBox`` to 480 px, below which they and wide
tables scroll sideways in their box, so their text stays legible).
Every figure a test may check carries a ``data-*`` attribute with its exact
value next to the formatted text (``data-total-cost``, ``data-total-tokens``,
``data-model``…).  The cost chart has one bar per day, or one per hour (00–23)
when the report covers a single day; budget bars carry labelled 70 % and 90 %
marks; the per-task table links each task's ``result.json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from urllib.parse import quote

from scheduler.cli._report import HistoryRow, ReportData, Row, TaskUse, report_span

__all__ = ["budget_chart_svg", "cost_chart_svg", "hourly_cost_chart_svg", "report_html"]

PALETTE = {"haiku": "#4caf50", "sonnet": "#2196f3", "opus": "#9c27b0"}
_OTHER = ("#ff9800", "#795548", "#607d8b", "#e91e63")
LEVEL_COLOUR = {"ok": "#43a047", "warning": "#fbc02d", "critical": "#e53935"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px} th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:16px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 16px}
.card b{display:block;font-size:20px} svg text{font-size:11px;fill:#333}
svg{max-width:100%;height:auto} .scroll{overflow-x:auto;max-width:100%}
.chart svg{min-width:480px}
td.warning{background:#fff8e1} td.critical{background:#ffebee}
@media (max-width:600px){body{margin:10px} h1{font-size:18px}
 table{font-size:12px} th,td{padding:3px 5px}}
"""


def colour(model: str, models: list[str]) -> str:
    if model in PALETTE:
        return PALETTE[model]
    return _OTHER[models.index(model) % len(_OTHER)] if model in models else _OTHER[0]


def _stacked_bars(slots: list[tuple[str, str]], cost: Mapping[str, Mapping[str, float]],
                  label: str, key: str, width: int, height: int,
                  every: int = 1) -> str:
    """Stacked bars over ``slots`` (``(key, axis label)``), one colour per model."""
    models = sorted({m for k, _ in slots for m in cost.get(k, {})})
    left, bottom, top = 60, 40, 20
    plot_h = height - bottom - top
    peak = max((sum(cost.get(k, {}).values()) for k, _ in slots), default=0.0) or 1.0
    slot = (width - left - 120) / len(slots)
    parts = [f'<svg role="img" aria-label="{label}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 120}" y2="{top + plot_h}" '
             'stroke="#999"/>',
             f'<text x="4" y="{top + 8}">${peak:.4f}</text>',
             f'<text x="4" y="{top + plot_h}">$0</text>']
    for i, (k, axis) in enumerate(slots):
        x = left + i * slot + slot * 0.15
        y: float = top + plot_h
        for model in models:
            value = cost.get(k, {}).get(model, 0.0)
            if not value:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                f'fill="{colour(model, models)}" data-{key}="{escape(k)}" '
                f'data-model="{escape(model)}" data-cost="{value:.6f}"><title>{escape(axis)} '
                f'{escape(model)}: ${value:.6f}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" '
                         f'data-axis="{escape(axis)}">{escape(axis)}</text>')
    for j, model in enumerate(models):
        ly = top + 14 * j
        parts.append(f'<rect x="{width - 110}" y="{ly}" width="10" height="10" '
                     f'fill="{colour(model, models)}"/>'
                     f'<text x="{width - 95}" y="{ly + 9}">{escape(model)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def cost_chart_svg(cost: Mapping[str, Mapping[str, float]], width: int = 720,
                   height: int = 260) -> str:
    """Stacked bars: cost per day, one colour per model."""
    days = sorted(cost)
    if not days:
        return '<svg role="img" width="320" height="40"><text x="4" y="24">no usage</text></svg>'
    return _stacked_bars([(d, d) for d in days], cost, "cost over time by model", "day",
                         width, height)


def hourly_cost_chart_svg(cost: Mapping[str, Mapping[str, float]], day: str,
                          width: int = 720, height: int = 260) -> str:
    """Stacked bars: cost per hour of ``day`` (00–23, labelled every 3 hours)."""
    slots = [(f"{day} {h:02d}", f"{h:02d}:00") for h in range(24)]
    if not any(k in cost for k, _ in slots):
        return '<svg role="img" width="320" height="40"><text x="4" y="24">no usage</text></svg>'
    return _stacked_bars(slots, cost, f"cost by hour of {day} by model", "hour", width, height,
                         every=3)


def budget_chart_svg(tasks: Iterable[TaskUse], width: int = 600) -> str:
    """Horizontal bars: budget use per task (green < 70 % < yellow < 90 % < red), with the
    70 % and 90 % marks drawn and labelled above the bars."""
    rows = list(tasks)
    if not rows:
        return '<svg role="img" width="320" height="40"><text x="4" y="24">no tasks</text></svg>'
    bar_h, left, label_w, head = 16, 90, 70, 18
    plot_w = width - left - label_w
    height = bar_h * len(rows) + head + 20
    parts = [f'<svg role="img" aria-label="budget use by task" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for i, t in enumerate(rows):
        y = head + 6 + i * bar_h
        frac = t.fraction
        level = _level(frac)
        w = plot_w * min(frac, 1.0)
        parts.append(
            f'<text x="4" y="{y + 11}">{escape(t.task_id)}</text>'
            f'<rect x="{left}" y="{y}" width="{plot_w}" height="{bar_h - 3}" fill="#eee"/>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 3}" '
            f'fill="{LEVEL_COLOUR[level]}" data-task="{escape(t.task_id)}" '
            f'data-fraction="{frac:.6f}"><title>{escape(t.task_id)}: {frac:.1%}</title></rect>'
            f'<text x="{left + plot_w + 6}" y="{y + 11}">{frac:.0%}</text>')
    for mark, name in ((0.7, "warning"), (0.9, "critical")):
        x = left + plot_w * mark
        parts.append(f'<line x1="{x:.1f}" y1="{head}" x2="{x:.1f}" y2="{height - 14}" '
                     'stroke="#999" stroke-dasharray="3,3"/>'
                     f'<text x="{x:.1f}" y="{head - 5}" text-anchor="middle" '
                     f'data-mark="{mark:.1f}">{mark:.0%} {name}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _level(frac: float) -> str:
    return "ok" if frac < 0.7 else "warning" if frac < 0.9 else "critical"


def _task_table(tasks: tuple[TaskUse, ...]) -> str:
    """Per-task cost, budget use and status; the task links its ``result.json``."""
    head = "".join(f"<th>{h}</th>" for h in ("task", "type", "agent", "status", "calls",
                                            "tokens", "cost $", "budget used", "result"))
    body = []
    for t in sorted(tasks, key=lambda t: (-t.cost_usd, t.task_id)):
        link = (f'<a href="{_file_uri(t.result)}" data-result="{escape(t.task_id)}">'
                "result.json</a>" if t.result is not None else "—")
        body.append(
            f'<tr data-task-row="{escape(t.task_id)}" data-tokens="{t.tokens}" '
            f'data-cost="{t.cost_usd:.6f}"><td>{escape(t.task_id)}</td>'
            f"<td>{escape(t.task_type)}</td><td>{escape(t.agent)}</td>"
            f"<td>{escape(t.status or '—')}</td><td class=\"n\">{t.calls}</td>"
            f'<td class="n">{t.tokens:,}</td><td class="n">{t.cost_usd:.6f}</td>'
            f'<td class="n {_level(t.fraction)}">{t.fraction:.0%}</td><td>{link}</td></tr>')
    empty = "" if tasks else '<tr><td colspan="9">none</td></tr>'
    return (f'<h2>Per task <span data-task-count="{len(tasks)}">({len(tasks)})</span></h2>'
            f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}{empty}</table></div>')


def _file_uri(path: str) -> str:
    """A ``file://`` link that opens offline from wherever the report is saved."""
    return "file://" + quote(str(Path(path).resolve()))


def _usage_table(title: str, rows: tuple[Row, ...], kind: str) -> str:
    head = "".join(f"<th>{h}</th>" for h in (kind, "calls", "tokens", "prompt", "completion",
                                            "cache read", "cache write", "cost $"))
    body = "".join(
        f'<tr data-{kind}="{escape(r.key)}" data-tokens="{r.tokens}" '
        f'data-cost="{r.cost_usd:.6f}"><td>{escape(r.key)}</td><td class="n">{r.calls}</td>'
        f'<td class="n">{r.tokens:,}</td><td class="n">{r.prompt_tokens:,}</td>'
        f'<td class="n">{r.completion_tokens:,}</td><td class="n">{r.cache_read_tokens:,}</td>'
        f'<td class="n">{r.cache_write_tokens:,}</td><td class="n">{r.cost_usd:.6f}</td></tr>'
        for r in rows)
    return (f'<h2>{escape(title)}</h2><div class="scroll"><table><tr>{head}</tr>{body}'
            "</table></div>")


def _history_table(title: str, rows: tuple[HistoryRow, ...], kind: str) -> str:
    body = "".join(
        f'<tr class="{kind}"><td>{h.day}</td><td>{escape(h.name)}</td><td>{escape(h.task_id)}'
        f"</td><td>{escape(h.message)}</td></tr>" for h in rows)
    empty = "" if rows else "<tr><td colspan=4>none</td></tr>"
    return (f'<h2>{escape(title)} <span data-{kind}-count="{len(rows)}">({len(rows)})</span>'
            f'</h2><div class="scroll"><table><tr><th>day</th><th>event</th><th>task</th>'
            f"<th>message</th></tr>{body}{empty}</table></div>")


def report_html(data: ReportData) -> str:
    """The whole report page."""
    t = data.total
    span = report_span(data)
    cards = (
        f'<div class="cards"><div class="card">cost<b id="total-cost" '
        f'data-total-cost="{t.cost_usd:.6f}">${t.cost_usd:.6f}</b></div>'
        f'<div class="card">tokens<b id="total-tokens" data-total-tokens="{t.tokens}">'
        f"{t.tokens:,}</b></div>"
        f'<div class="card">calls<b id="total-calls" data-total-calls="{t.calls}">{t.calls}'
        f"</b></div></div>")
    days = sorted(data.cost_by_day_model)
    one_day = data.day_from if data.day_from and data.day_from == data.day_to else (
        days[0] if len(days) == 1 else None)
    chart = (hourly_cost_chart_svg(data.cost_by_hour_model, one_day) if one_day
             else cost_chart_svg(data.cost_by_day_model))
    chart_title = f"Cost by hour of {one_day} by model" if one_day else "Cost over time by model"
    return "".join((
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>vibe-engine report {escape(span)}</title><style>{_CSS}</style></head><body>",
        f"<h1>vibe-engine report — {escape(span)}</h1>", cards,
        f'<h2>{escape(chart_title)}</h2><div class="scroll chart">{chart}</div>',
        '<h2>Budget use by task</h2><div class="scroll chart">',
        budget_chart_svg(data.tasks), "</div>",
        _task_table(data.tasks),
        _usage_table("Per day", data.by_day, "day"),
        _usage_table("Per model", data.by_model, "model"),
        _usage_table("Per task type", data.by_task_type, "type"),
        _usage_table("Per agent", data.by_agent, "agent"),
        _history_table("Alert history", data.alerts, "alerts"),
        _history_table("Deadlock history", data.deadlocks, "deadlocks"),
        _history_table("Routing and health changes", data.routing, "routing"),
        "</body></html>",
    ))


def write_html_report(data: ReportData, path: Path) -> Path:
    """Write the self-contained HTML report to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(data), encoding="utf-8")
    return path
