"""#23 the HTML report: a per-task cost table whose rows link the tasks' results, labelled
70 % / 90 % marks on the budget bars, an hourly time axis for a one-day report — looked at
in headless Chromium at 1400 px and at phone width."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote

import pytest

from agents import discover_agents, make_provider
from scheduler.cli._report import ReportData, Row, TaskUse, gather_report
from scheduler.cli._report_html import report_html, write_html_report
from scheduler.runtime import Orchestrator
from scheduler.store import SqliteStore
from scheduler.testing import FRIDAY, FixedWallClock, run_virtual
from tests._observe_helpers import (
    chromium,
    demo_orchestrator,
    instant_shell_context,
    page_errors,
    require_chromium,
    screenshot,
)

#: Set VIBE_SCREENSHOTS=DIR to keep the screenshots there, for a person to look at.
SHOTS = os.environ.get("VIBE_SCREENSHOTS")


@pytest.fixture(scope="module")
def one_day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Friday session of the staged demo: completed tasks with results, a deferred one
    and a paused one (over its budget, saved and finished by the decision timeout)."""
    tmp = tmp_path_factory.mktemp("report23")
    template = demo_orchestrator(tmp, tasks=8, time_scale=0.01, staged=True)
    orch = Orchestrator(template.config, provider=make_provider(template.config),
                        agents=discover_agents(), wall=FixedWallClock(FRIDAY),
                        context_factory=instant_shell_context)
    run_virtual(orch.run)
    return template.config.state_dir


def _gather(state: Path) -> tuple[ReportData, dict[str, float]]:
    async def main() -> tuple[ReportData, dict[str, float]]:
        store = SqliteStore(state / "vibe.db")
        await store.open()
        try:
            data = await gather_report(store, state_dir=state, day_from=FRIDAY.isoformat(),
                                       day_to=FRIDAY.isoformat())
            per_task: dict[str, float] = defaultdict(float)
            for e in await store.events():
                per_task[e.task_id] += e.cost_usd
            return data, dict(per_task)
        finally:
            await store.aclose()

    return run_virtual(main)


def test_issue23_one_day_report_has_hours_task_table_results_and_marks(
        one_day: Path, tmp_path: Path) -> None:
    """#23 (R2.1 per-task figures, R3.1 marks): the one-day page's cost chart runs over the
    day's 24 hours; the per-task table's costs equal the store's; completed tasks link
    their result.json; the 70 % and 90 % marks are labelled."""
    data, per_task = _gather(one_day)
    html = write_html_report(data, tmp_path / "r.html").read_text()
    day = FRIDAY.isoformat()
    assert f"Cost by hour of {day}" in html
    axis = re.findall(r'data-axis="([^"]+)"', html)
    assert axis == [f"{h:02d}:00" for h in range(0, 24, 3)]
    hours = re.findall(r'data-hour="([^"]+)" data-model="[^"]+" data-cost="([^"]+)"', html)
    assert hours and all(h.startswith(f"{day} ") for h, _ in hours)
    assert sum(float(c) for _, c in hours) == pytest.approx(data.total.cost_usd, abs=1e-5)
    rows = dict(re.findall(r'data-task-row="([^"]+)" data-tokens="\d+" data-cost="([^"]+)"',
                           html))
    assert set(rows) == set(per_task) and len(rows) >= 9
    for task, cost in per_task.items():
        assert float(rows[task]) == pytest.approx(cost, abs=1e-6)
    links = dict((t, h) for h, t in re.findall(
        r'<a href="([^"]+)" data-result="([^"]+)">result\.json</a>', html))
    completed = {t.task_id for t in data.tasks if t.status == "completed"}
    assert completed and set(links) == completed
    for task, href in links.items():
        doc = json.loads(Path(unquote(href.removeprefix("file://"))).read_text())
        assert doc["task_id"] == task
    assert re.search(r'data-mark="0\.7">70% warning<', html)
    assert re.search(r'data-mark="0\.9">90% critical<', html)


def test_issue23_several_days_keep_the_daily_axis_and_levels_colour_rows() -> None:
    """A range over several days keeps one bar per day (no hourly axis); a task's budget
    cell is coloured by its level (R3.1: < 70 % ok, < 90 % warning, else critical)."""
    total = Row("total", 0, 0, 0, 0, 0, 0.0, 0)
    tasks = tuple(TaskUse(f"t{i}", "qa", "qa", tokens, 0.0, 1000, None, calls=1)
                  for i, tokens in enumerate((500, 800, 1200)))
    data = ReportData(None, None, total, (), (), (), (),
                      cost_by_day_model={"2026-11-05": {"haiku": 0.1},
                                         "2026-11-06": {"opus": 0.2}},
                      cost_by_hour_model={"2026-11-05 10": {"haiku": 0.1}}, tasks=tasks)
    html = report_html(data)
    assert "Cost over time by model" in html and "data-hour=" not in html
    assert re.findall(r'data-axis="([^"]+)"', html) == ["2026-11-05", "2026-11-06"]
    levels = re.findall(r'data-task-row="(t\d)".*?class="n (\w+)">(\d+)%', html)
    assert sorted(levels) == [("t0", "ok", "50"), ("t1", "warning", "80"),
                              ("t2", "critical", "120")]
    assert "result.json</a>" not in html  # no result file: no link


def _overflow_probe(page: Path, out: Path) -> Path:
    """A copy of the page whose script writes the page's scroll width and the viewport's
    width into the DOM (the report itself has no script)."""
    probe = ('<script>document.addEventListener("DOMContentLoaded",()=>{'
             "const b=document.body.dataset;"
             "b.scrollWidth=document.documentElement.scrollWidth;"
             "b.viewWidth=window.innerWidth;});</script>")
    out.write_text(page.read_text().replace("</head>", probe + "</head>"))
    return out


@pytest.mark.slow
def test_issue23_report_in_headless_chromium_desktop_and_phone(
        one_day: Path, tmp_path: Path) -> None:
    """#23: screenshots at 1400 px and 390 px (phone); at phone width the page itself does
    not scroll sideways (charts scale down, wide tables scroll inside their box)."""
    binary = require_chromium()
    data, _ = _gather(one_day)
    page = write_html_report(data, tmp_path / "report.html")
    for name, size in (("desktop", (1400, 900)), ("phone", (390, 844))):
        png = tmp_path / f"report-{name}.png"
        shot = screenshot(binary, page, png, tmp_path / f"profile-{name}", size=size)
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert page_errors(shot.stderr) == []
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, Path(SHOTS) / png.name)
    probe = _overflow_probe(page, tmp_path / "probe.html")
    dom = chromium(binary, probe, tmp_path / "profile-probe", "--window-size=390,844",
                   "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # headless Chromium lays a window out at least 500 px wide: the page must fit it
    scroll = re.search(r'data-scroll-width="(\d+)"', dom.stdout)
    view = re.search(r'data-view-width="(\d+)"', dom.stdout)
    assert scroll is not None and view is not None
    assert int(view.group(1)) <= 500 and int(scroll.group(1)) <= int(view.group(1))
