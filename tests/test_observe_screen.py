"""#23: the live view at 80×24 (R7.2, the command line's live screen) — figures that are
never cut, sections that all stay on screen, the command that answers a paused task,
readable event times, no success rate for a model nobody called, and log lines that do
not scroll over the view."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
from io import StringIO
from pathlib import Path

import pyte
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from scheduler.control import answer_command
from scheduler.observe import (
    BudgetBar,
    EventView,
    LiveView,
    ModelView,
    PoolView,
    Snapshot,
    TaskView,
    configure_logging,
    render_snapshot,
)
from scheduler.observe._screen import SECTIONS
from scheduler.observe._text import clip, count, money
from tests._observe_helpers import demo_orchestrator, terminal_console

#: A number cut by an ellipsis (``8,1…``) or an ellipsis glued to digits.
CUT_NUMBER = re.compile(r"\d[\d,.]*…|…\d")
ANSWER = re.compile(r"vibe-engine decide (--state-dir \S+ )?(?P<task>t\d+) add --tokens \d+ \| "
                    r"finish \| review")


def _big_snapshot(n_tasks: int = 26) -> Snapshot:
    """A run like the staged demo's worst moment: many agents in every state, large
    figures, a paused task, a model nobody called yet."""
    states = ("running", "waiting", "completed", "deferred", "pending")
    tasks = [TaskView(f"t{i:02d}", "refactor" if i % 5 == 0 else "coder",
                      states[i % len(states)], priority="critical_path", model="sonnet",
                      tokens=8_123_456 + i, cost_usd=1234.5678, budget_fraction=0.93,
                      queue_position=i if states[i % len(states)] == "waiting" else None,
                      estimated_wait_s=123.45, reason="opus temporarily unavailable, "
                      "switched to sonnet after 12,345 tokens")
             for i in range(1, n_tasks)]
    tasks.append(TaskView("t26", "coder", "paused", tokens=5_578, budget_fraction=1.12,
                          reason="budget exceeded for task:t26: tokens used 5578 > limit 5000",
                          answer=answer_command("t26", "tokens", 5_578, 5_000)))
    budgets = [BudgetBar("session:s-20261202-122656-67506d", d, 8_123_456.0, 10_000_000.0,
                         0.81, "warning")
               for d in ("tokens", "tokens:opus", "tokens:sonnet", "tokens:haiku")]
    budgets += [BudgetBar("day:2026-12-02", "cost_usd", 18_123.456, 20_000.0, 0.906,
                          "critical"),
                BudgetBar("task:t26", "tokens", 5_578.0, 5_000.0, 1.12, "exceeded")]
    events = [EventView("task_paused", 990.0 + i, f"task t{i} paused: budget exceeded for "
                        f"task:t{i}: tokens used 0 + requested 5578 > limit 5000", f"t{i}",
                        "warning") for i in range(10)]
    return Snapshot(
        session_id="s-20261202-122656-67506d", at=1005.1, tasks=tuple(tasks),
        budgets=tuple(budgets),
        pools=(PoolView("anthropic", leases=6, waiting=123, calls_in_use=6, concurrent=6,
                        tokens_available=339_789.15, tokens_per_minute=400_000,
                        grants=12_345, expired=3),),
        models=(ModelView("haiku", "available", 12_345, 0.998, 0.002, 0.11),
                ModelView("sonnet", "recovering", 45, 0.8, 0.2, 12.5),
                ModelView("opus", "unavailable", 0)),
        events=tuple(events),
        totals={"tokens": 81_234_567, "cost_usd": 12_345.678, "calls": 123_456},
    )


def _screen(snap: Snapshot, width: int = 80, height: int = 24) -> list[str]:
    console = Console(width=width, height=height, record=True, file=StringIO())
    console.print(render_snapshot(snap, height=height, width=width))
    return console.export_text().splitlines()


def test_r7_2_live_view_fits_80x24_with_every_section_and_no_cut_number() -> None:
    """#23, R7.2: at 80×24 the busiest screen keeps to 23 lines of at most 80 columns, shows
    every section's header, the paused task with the command that answers it, a summary
    of the agents it has no room for, and no number cut by an ellipsis."""
    lines = _screen(_big_snapshot())
    text = "\n".join(lines)
    assert len(lines) <= 23, text
    assert all(len(line) <= 80 for line in lines), text
    for section in SECTIONS:
        assert any(line.startswith(section) or f"  {section}" in line for line in lines), (
            section, text)
    assert not CUT_NUMBER.search(text), text
    assert "..." not in text  # rich's sign of a section collapsed for want of room
    assert re.search(r"(?m)^t26 +coder +norm +paused", text)
    assert ANSWER.search(text), text
    assert re.search(r"and \d+ more: \d+ running, \d+ waiting", text), text
    assert not any(line.lstrip().startswith(("█", "░")) for line in lines)  # no wrapped bar


def test_r7_2_figures_are_abbreviated_event_times_read_as_ago() -> None:
    """#23: 81,234,567 tokens read 81.2M, $12,345.68 reads $12.3k; an event 6.1 s before the
    snapshot reads "6 s ago" (not -6.1s); a model with no calls shows no success rate."""
    text = "\n".join(_screen(_big_snapshot(), 120, 40))
    assert "81.2M tokens" in text and "$12.3k" in text
    assert "6 s ago" in text and not re.search(r"-\d+\.\ds", text)
    opus = next(line for line in text.splitlines() if re.match(r"\s*opus +unavailable", line)
                or "opus   unavailable" in line)
    assert "–" in opus and "%" not in opus.split("unavailable", 1)[1], opus


def test_r3_4_each_event_line_says_whose_it_is() -> None:
    """R3.4, #23: an event of a task whose message does not name it (a pause that timed
    out, an alert) is shown with the task's id; one that names it is shown as it is."""
    events = (EventView("task_finished", 1.0, "saved and finished (timeout)", "t26"),
              EventView("budget_alert", 2.0, "budget at 70 %, consider wrapping up", "t14"),
              EventView("task_deferred", 3.0, "task t04 deferred: opus unavailable", "t04"),
              EventView("model_restored", 4.0, "model opus is back", None))
    text = "\n".join(_screen(Snapshot("s", 5.0, events=events), 120, 40))
    assert "t26: saved and finished (timeout)" in text
    assert "t14: budget at 70 %, consider wrapping up" in text
    assert "task t04 deferred" in text and "t04: task t04" not in text
    assert re.search(r"model_restored +model opus is back", text), text


@pytest.mark.parametrize(("width", "height"), [(80, 24), (80, 40), (100, 30), (160, 60)])
@pytest.mark.parametrize("n_tasks", [0, 1, 26, 400])
def test_r7_2_every_screen_size_fits(width: int, height: int, n_tasks: int) -> None:
    """#23: from 80×24 up, with no task to hundreds, the screen fits and cuts no number."""
    snap = _big_snapshot(max(n_tasks, 1)) if n_tasks else Snapshot("s", 0.0)
    lines = _screen(snap, width, height)
    assert len(lines) <= height - 1 and all(len(line) <= width for line in lines)
    assert not CUT_NUMBER.search("\n".join(lines))
    for section in SECTIONS:
        assert section in "\n".join(lines)


@given(st.text(alphabet="ab 0123456789,.:", max_size=60), st.integers(1, 50))
def test_r7_2_clip_never_cuts_a_number(text: str, width: int) -> None:
    """#23: a clipped text fits its width and never ends a cut inside a number."""
    out = clip(text, width)
    assert len(out) <= width
    if out.endswith("…") and len(out) > 1:
        assert not out[-2].isdigit()


@given(st.floats(0, 1e12))
def test_r7_2_abbreviated_figures_are_short(value: float) -> None:
    """#23: counts stay within 6 characters and money within 8, up to 10¹²."""
    assert len(count(value)) <= 6, count(value)
    assert len(money(value / 1000)) <= 8, money(value / 1000)


def test_r3_4_answer_command_names_the_dimension_and_state_dir() -> None:
    """R3.4, #23: the answer offers the paused dimension's option, an amount that lets the
    task go on, and the state dir unless it is the default."""
    assert answer_command("t26", "tokens", 0, 5000) == (
        "vibe-engine decide t26 add --tokens 5000 | finish | review")
    assert answer_command("x", "cost_usd", 0.3, 0.25, "st") == (
        "vibe-engine decide --state-dir st x add --cost 0.3 | finish | review")
    assert "--time-s" in answer_command("x", "time_s", 700, 600)


async def test_r7_2_log_lines_go_to_a_file_while_the_live_view_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """#23, R3.4: during a live view log lines (here the unanswered pause's ``task_finished``
    warning) go to the log file, not over the screen (stderr), and the screen shows the
    paused task's answer command; logging is put back afterwards."""
    stderr = StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging(level="info", json_logs=True)
    orch = demo_orchestrator(tmp_path, tasks=2, staged=True, time_scale=0.05,
                             alerts={"decision_timeout_s": 2.0})
    console, buf = terminal_console(80, 24)
    log = tmp_path / "live.log"
    orch.add_service(LiveView(orch.view, console, refresh_s=0.1, log_file=log).run)
    await orch.run()
    # the pause's timeout (2 s) ends it while the view is on: its lines are in the file
    assert "task_finished" in log.read_text() and "task_finished" not in stderr.getvalue()
    assert "vibe-engine decide --state-dir" in buf.getvalue()
    structlog.get_logger("t").warning("after_the_view")
    assert "after_the_view" in stderr.getvalue() and "after_the_view" not in log.read_text()


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _frames_of_demo(cwd: Path, *args: str, timeout: float = 60.0) -> list[list[str]]:
    """Run ``vibe-engine demo`` on an 80×24 pseudo-terminal; the screen (as a VT100
    emulator shows it) after every chunk of output."""
    leader, follower = os.openpty()
    _set_size(follower, 24, 80)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color")
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "vibe-engine"), "demo", *args],
                            stdin=follower, stdout=follower, stderr=follower, env=env, cwd=cwd)
    os.close(follower)
    screen = pyte.Screen(80, 24)
    stream = pyte.ByteStream(screen)
    frames: list[list[str]] = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout} s")
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            stream.feed(data)
            frames.append(list(screen.display))
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    return frames


def _answered_frame(frame: list[str], task: str) -> bool:
    text = "\n".join(frame)
    answer = ANSWER.search(text)
    return (frame[0].startswith(("vibe-engine · session", "session s-"))
            and bool(re.search(rf"(?m)^{task} +coder +norm +paused", text))
            and answer is not None and answer["task"] == task
            and all(s in text for s in SECTIONS))


@pytest.mark.slow
def test_r7_2_demo_live_view_at_80x24_on_a_pseudo_terminal(tmp_path: Path) -> None:
    """#23 acceptance, R7.2, R3.4: ``vibe-engine demo`` (the staged tight-budget pause) on
    an 80×24 pseudo-terminal: while t18 waits for a decision one whole screen shows the
    head line, the paused task, its answer command and every section's header; no screen
    cuts a number, wraps a bar or shows a log line (they go to the state dir's log file)."""
    # 16 agents plus the staged two: t18 pauses on its 5,000-token budget
    frames = _frames_of_demo(tmp_path, "--tasks", "16", "--state-dir", "st", "--time-scale",
                             "0.05", "--decision-timeout", "3", "--log-level", "info")
    assert any(_answered_frame(f, "t18") for f in frames), "\n".join(frames[-1])
    assert any(re.search(r"and \d+ more: ", "\n".join(f)) for f in frames)  # summed up
    for frame in frames:
        text = "\n".join(frame)
        assert not CUT_NUMBER.search(text), text
        assert "[info" not in text and "[warning" not in text, text  # no log line
        assert not any(line.lstrip().startswith(("█", "░")) for line in frame), text
    log = (tmp_path / "st" / "logs" / "live.log").read_text()
    assert "saved and finished (timeout)" in log  # t26's end, logged while the view was on


@pytest.mark.slow
def test_r7_2_run_tables_at_80_columns_keep_every_status_whole(tmp_path: Path) -> None:
    """#23, R7.2: the tables a run ends with, on an 80-column terminal, show each task's
    status whole (``completed``, not ``comple…``), the staged pause's ``finished`` too."""
    frames = _frames_of_demo(tmp_path, "--tasks", "2", "--state-dir", "st", "--time-scale",
                             "0.05", "--decision-timeout", "1", "--no-live")
    rows = {m["task"]: m["status"] for line in frames[-1]
            if (m := re.match(r"(?P<task>t0\d) +\S+ +\S+ +(?P<status>\S+) +[\d,]+ ", line))}
    assert rows == {"t01": "completed", "t02": "completed", "t03": "completed",
                    "t04": "finished"}, "\n".join(frames[-1])


async def test_r7_2_an_unwritable_log_file_leaves_the_run_and_view_going(tmp_path: Path) -> None:
    """#23: when the live log file cannot be created the view draws anyway (log lines stay
    on standard error) and says so once."""
    from structlog.testing import capture_logs

    (tmp_path / "taken").write_text("a file where the log folder goes")
    orch = demo_orchestrator(tmp_path, tasks=2, time_scale=0.05)
    console, buf = terminal_console(80, 24)
    view = LiveView(orch.view, console, refresh_s=0.1, log_file=tmp_path / "taken" / "x.log")
    orch.add_service(view.run)
    with capture_logs() as logs:
        report = await orch.run()
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    assert [e["event"] for e in logs].count("live_log_unavailable") == 1
    assert view.log_file is None and "Recent events" in buf.getvalue()


def test_r3_4_live_status_lines_name_the_answer_of_a_paused_task() -> None:
    """R3.4, #23: without a terminal, the live_status log line carries each paused task's
    answer command."""
    from scheduler.observe._live import summary_fields

    fields = summary_fields(_big_snapshot())
    assert fields["paused"] == {"t26": "vibe-engine decide t26 add --tokens 5000 | finish | "
                                       "review"}
