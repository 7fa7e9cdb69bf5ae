"""The live view, snapshots and status (issue 9; SPEC "Observability", R3.1 colours, R5.5)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console, Group
from rich.segment import Segment
from structlog.testing import capture_logs

from scheduler.core import FixedWallClock
from scheduler.observe import LiveView, Snapshot, render_snapshot, snapshot_of
from scheduler.observe._observers import status_path
from scheduler.observe._schema import StatusDoc
from scheduler.observe._screen import _budgets
from scheduler.observe._snapshot import alert_level
from scheduler.observe._status import read_status, snapshot_from_store
from scheduler.store import SqliteStore
from scheduler.tasks import TaskStatus
from scheduler.testing import FRIDAY, run_real, run_virtual
from tests._observe_helpers import crafted_snapshot, demo_orchestrator, strip_ansi, terminal_console

ROW = r"(?m)^{task} +\w+ +\w+ +{state}"


def _states_on_screen(text: str) -> set[str]:
    """States shown in the agents table's state column anywhere in the captured screen."""
    found = set()
    for state in ("running", "waiting", "paused", "deferred", "completed", "pending"):
        if re.search(ROW.format(task=r"[\w.]+", state=state), text):
            found.add(state)
    return found


@pytest.mark.slow
async def test_live_view_shows_running_waiting_completed_during_a_real_demo(tmp_path: Path) -> None:
    """Observability, R5.5: during a real demo run the live view shows running, waiting
    (with queue position and estimated wait, from the allocator) and completed tasks,
    the pool's leases and the models' health.

    Paused (R3.4, alerts) and deferred (R6.7, replanning while a model is down)
    need an exceeded budget or an outage; the next test crafts them as snapshot
    data and checks the same screen code shows them.
    """
    orch = demo_orchestrator(tmp_path, tasks=8, time_scale=1.0,
                             allocator={"pools": {"anthropic": {"concurrent": 2}}})
    console, buf = terminal_console()
    view = LiveView(orch.view, console, refresh_s=0.2)
    orch.add_service(view.run)

    await orch.run()
    screen = strip_ansi(buf.getvalue())
    assert view.frames > 10
    states = _states_on_screen(screen)
    assert {"running", "waiting", "completed"} <= states, states
    assert re.search(r"waiting #\d+, ~\d+\.\ds", screen)
    assert re.search(r"anthropic [0-2]/2 calls", screen)  # calls in use
    assert re.search(r"(haiku|sonnet|opus) +available", screen)  # model health
    assert "Budgets" in screen and "session tokens" in screen and "Recent events" in screen
    assert "task_completed" not in screen  # routine events stay out of the panel
    # the last frame shows every task completed
    last = screen[screen.rfind("vibe-engine · session"):]
    assert "completed 8" in last


@pytest.mark.slow
async def test_live_view_shows_every_state_during_the_staged_demo(tmp_path: Path) -> None:
    """Observability acceptance, R3.4, R5.5, R6.7: the demo as ``vibe-engine demo`` runs it
    (24 tasks, the opus outage, the tight-budget task) shows each state on the live screen
    at least once — running, waiting with queue position and estimated wait, paused (with
    its reason), deferred (while opus is down) and completed — and the paused task ends
    saved and finished when nobody decides."""
    orch = demo_orchestrator(tmp_path, tasks=24, time_scale=0.25, staged=True)
    console, buf = terminal_console()
    orch.add_service(LiveView(orch.view, console, refresh_s=0.1).run)
    report = await orch.run()
    screen = strip_ansi(buf.getvalue())
    states = _states_on_screen(screen)
    assert {"running", "waiting", "paused", "deferred", "completed"} <= states, states
    assert re.search(r"waiting #\d+, ~\d+\.\ds", screen)
    assert re.search(ROW.format(task="t26", state="paused"), screen)
    deferred = {e.task_id for e in orch.bus.history if e.name == "task_deferred"}
    assert deferred and any(re.search(ROW.format(task=t, state="deferred"), screen)
                            for t in deferred)
    assert re.search(r"opus +unavailable", screen)  # the outage in model health
    assert report.outcomes["t26"].status == "finished"
    assert report.outcomes["t25"].status == "completed"
    names = [e.name for e in orch.bus.history]
    assert names.count("model_unavailable") == names.count("model_restored") == 1


def test_live_view_shows_waiting_paused_deferred_from_snapshot_data() -> None:
    """R5.5/R3.4/R6.7 states on screen: queue position and estimated wait, paused, deferred.

    Crafted snapshot data (the allocator, alerts and routing parts fill these in
    a real run once they land on main).
    """
    console, buf = terminal_console()
    console.print(render_snapshot(crafted_snapshot()))
    screen = strip_ansi(buf.getvalue())
    assert {"running", "waiting", "paused", "deferred", "completed"} <= _states_on_screen(screen)
    assert "waiting #2, ~3.5s" in screen
    assert "task:p1 tokens exceeded" in screen and "opus unavailable" in screen
    assert "unavailable" in screen and "recovering" in screen
    assert "agent w2 yielded due to deadlock" in screen
    assert "3/50 calls" in screen  # calls in use of the pool


def test_agents_table_caps_rows_active_first() -> None:
    """A large run shows the active tasks first and a count of the rest."""
    from scheduler.observe import TaskView
    from scheduler.observe._screen import _agents

    tasks = tuple(TaskView(f"c{i:03d}", "qa", "completed") for i in range(100))
    snap = Snapshot("s", 0.0, tasks=(*tasks, TaskView("w1", "qa", "waiting", queue_position=1)))
    console, buf = terminal_console()
    console.print(Group(*_agents(snap, 80, room=5)))
    screen = strip_ansi(buf.getvalue())
    assert "w1" in screen and "97 more: 97 completed" in screen and "c004" not in screen


def _style_of(console: Console, renderable: object, needle: str) -> str:
    for seg in console.render(renderable):  # type: ignore[arg-type]
        if isinstance(seg, Segment) and needle in seg.text and seg.style is not None:
            return str(seg.style.color.name if seg.style.color else "")
    raise AssertionError(f"{needle!r} not rendered")


def test_r3_1_budget_bar_colours_green_yellow_red() -> None:
    """R3.1: green below 70 %, yellow from 70 %, red from 90 %."""
    console = Console(width=160, force_terminal=True, color_system="standard")
    table = Group(*_budgets(crafted_snapshot(), 160, None))
    assert _style_of(console, table, "50%") == "green"
    assert _style_of(console, table, "80%") == "yellow"
    assert _style_of(console, table, "95%") == "red"


def test_r3_1_alert_level_thresholds() -> None:
    """R3.1: the level names the views use follow the configured thresholds."""
    from scheduler.config import AlertsConfig

    a = AlertsConfig()
    assert [alert_level(f, a) for f in (0.0, 0.69, 0.7, 0.89, 0.9, 1.0, 1.5)] == [
        "ok", "ok", "warning", "warning", "critical", "exceeded", "exceeded"]


async def test_live_view_degrades_to_log_lines_when_not_a_tty(tmp_path: Path) -> None:
    """Observability: without a terminal the live view writes structured live_status lines."""
    orch = demo_orchestrator(tmp_path, tasks=4, time_scale=1.0)
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115, ASYNC230 - closed below
    try:
        orch.add_service(LiveView(orch.view, console, log_every_s=0.5).run)
        with capture_logs() as logs:
            await orch.run()
    finally:
        console.file.close()
    lines = [e for e in logs if e["event"] == "live_status"]
    assert len(lines) >= 2
    assert any(e.get("n_running") for e in lines)
    assert lines[-1]["final"] is True and lines[-1]["n_completed"] == 4


def test_snapshot_round_trips_through_json(tmp_path: Path) -> None:
    """status --json carries the same facts as the live view (to_dict/from_dict)."""
    snap = crafted_snapshot()
    again = Snapshot.from_dict(json.loads(json.dumps(snap.to_dict())))
    assert again == snap
    assert again.counts() == {"waiting": 1, "paused": 1, "deferred": 1, "running": 1,
                              "completed": 1}


async def test_status_json_written_while_running_and_final_when_done(tmp_path: Path) -> None:
    """status.json is rewritten every second during a run; the last one says running: false."""
    orch = demo_orchestrator(tmp_path, tasks=6, time_scale=1.0)
    seen: list[dict[str, object]] = []
    path = status_path(orch.config.state_dir)

    async def watch() -> None:
        import anyio

        while True:
            await anyio.sleep(1.0)
            if path.exists():
                seen.append(json.loads(path.read_text()))

    orch.services.append(watch)
    await orch.run()
    assert orch.observers.status is not None and orch.observers.status.writes >= 3
    assert any(s["running"] and s["counts"].get("running") for s in seen)  # type: ignore[attr-defined]
    final = json.loads(path.read_text())
    assert final["running"] is False and final["counts"] == {"completed": 6}
    assert final["pid"] == os.getpid() and final["session_id"] == orch.session_id


def test_read_status_uses_running_orchestrator_else_store(tmp_path: Path) -> None:
    """`vibe-engine status`: the running orchestrator's snapshot, else the store's record."""
    orch = demo_orchestrator(tmp_path, tasks=5, time_scale=0.01)
    run_virtual(orch.run)
    state = orch.config.state_dir

    async def read() -> tuple[Snapshot, Snapshot]:
        store = SqliteStore(state / "vibe.db")
        await store.open()
        try:
            ended = await read_status(store, state, today=FixedWallClock(FRIDAY).now().date())
            # pretend the orchestrator is still running: our own pid is alive
            data = json.loads(status_path(state).read_text())
            data["running"] = True
            status_path(state).write_text(json.dumps(data))
            running = await read_status(store, state, today=FRIDAY)
            return ended, running
        finally:
            await store.aclose()

    ended, running = run_virtual(read)
    assert ended.source == "store" and not ended.running
    assert ended.counts() == {"completed": 5}
    assert ended.session_id == orch.session_id
    assert {t.task_id for t in ended.tasks} == {f"t0{i}" for i in range(1, 6)}
    tokens = sum(t.tokens for t in ended.tasks)
    assert tokens == ended.totals["tokens"] > 0
    assert any(e.name == "task_completed" for e in ended.events)
    assert running.source == "orchestrator" and running.running


async def test_snapshot_from_store_without_history_or_tasks(tmp_path: Path) -> None:
    """An empty store gives an empty snapshot, not an error."""

    async def main() -> Snapshot:
        store = SqliteStore(tmp_path / "vibe.db")
        await store.open()
        try:
            return await snapshot_from_store(store, tmp_path, today=FRIDAY)
        finally:
            await store.aclose()

    snap = await main()
    assert snap.tasks == () and snap.session_id == "" and snap.source == "store"
    assert any(b.dimension == "cost_usd" for b in snap.budgets)


def test_snapshot_of_a_finished_run(tmp_path: Path) -> None:
    """Observability: after a run the snapshot shows every task, the totals and events."""
    orch = demo_orchestrator(tmp_path, tasks=2, time_scale=0.01)
    run_virtual(orch.run)

    async def snap() -> Snapshot:
        return snapshot_of(orch.view, now=0.0)

    s = run_virtual(snap)
    assert s.counts() == {"completed": 2}, [t.reason for t in s.tasks]
    assert s.totals["calls"] >= 2 and s.events
    assert {b.scope.split(":")[0] for b in s.budgets} == {"session", "day"}


def test_history_persisted_with_unique_keys_across_sessions(tmp_path: Path) -> None:
    """Every bus event is persisted as a ``history`` record; two sessions never collide."""
    # the coder's tool loop writes real files in worker threads: on a virtual clock time
    # would jump past task time budgets meanwhile, so these runs use real (short) time
    first = demo_orchestrator(tmp_path, tasks=3, time_scale=0.01)
    run_real(first.run)
    second = demo_orchestrator(tmp_path, tasks=2, time_scale=0.01)
    run_real(second.run)

    async def records() -> dict[str, dict[str, object]]:
        store = SqliteStore(second.config.state_dir / "vibe.db")
        await store.open()
        try:
            return await store.list_state("history")
        finally:
            await store.aclose()

    history = run_virtual(records)
    emitted = len(first.bus.history) + len(second.bus.history)
    assert len(history) == emitted
    sessions = {str(r["session_id"]) for r in history.values()}
    assert sessions == {first.session_id, second.session_id}
    completed = [r for r in history.values() if r["name"] == "task_completed"]
    assert len(completed) == 5
    assert all(k.startswith(str(r["session_id"]) + ":") for k, r in history.items())


class StatusProbe:
    """An agent that runs `vibe-engine status --json` in another process, mid-run."""

    seen: dict[str, object] = {}

    async def run(self, ctx: object) -> None:
        import anyio

        state = Path(str(StatusProbe.seen["state"]))
        proc = await anyio.run_process(
            [str(Path(sys.executable).parent / "vibe-engine"), "status", "--state-dir",
             str(state), "--json"], check=False)
        StatusProbe.seen["rc"] = proc.returncode
        StatusProbe.seen["out"] = proc.stdout.decode()


@pytest.mark.real_asyncio  # `vibe-engine status` runs as a real process during the run
async def test_status_command_reads_the_running_orchestrator(tmp_path: Path) -> None:
    """`vibe-engine status` in another process shows the running orchestrator's snapshot."""
    from scheduler import TaskSpec

    orch = demo_orchestrator(tmp_path, tasks=2, time_scale=0.01)
    orch.agents["probe"] = StatusProbe
    StatusProbe.seen = {"state": str(orch.config.state_dir)}
    await orch.run([*orch.config.tasks, TaskSpec(id="probe", agent="probe")])
    assert StatusProbe.seen["rc"] == 0
    data = json.loads(str(StatusProbe.seen["out"]))
    assert data["source"] == "orchestrator" and data["running"] is True
    assert data["session_id"] == orch.session_id
    assert {t["task_id"] for t in data["tasks"]} == {"t01", "t02", "probe"}
    # #23: the one status schema, with the session and day bars of the running session
    assert set(data) == StatusDoc.__required_keys__
    assert {b["scope"] for b in data["budgets"]} >= {f"session:{orch.session_id}",
                                                     f"day:{orch.wall.now().date()}"}


@pytest.mark.slow
def test_demo_command_draws_the_live_view_on_a_pseudo_terminal(tmp_path: Path) -> None:
    """`vibe-engine demo` on a pseudo-terminal draws the live view (the CLI wiring)."""
    import pty
    import subprocess

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "60", "TERM": "xterm-256color"}
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "vibe-engine"), "demo", "--tasks", "6",
         "--time-scale", "0.05", "--no-staged", "--state-dir", str(tmp_path / "st")],
        stdin=follower, stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    screen = strip_ansi(b"".join(chunks).decode(errors="replace"))
    assert "Agents —" in screen and "Recent events" in screen and "Leases and pools" in screen
    assert "completed 6" in screen
    assert "Models" in screen and "total" in screen  # the final report tables follow


async def test_snapshot_reads_allocator_controller_and_health(tmp_path: Path) -> None:
    """R5.5/R3.4/R6.3: snapshot_of reads the parts' statistics() from the run's view.

    Stand-ins with the field names of the allocator's, pause controller's and health
    monitor's statistics give states a short run never reaches all at once.
    """
    from types import SimpleNamespace

    orch = demo_orchestrator(tmp_path, tasks=3, time_scale=0.01)
    orch.add_tasks(orch.config.tasks)
    for h in orch.handles.values():
        h.status = TaskStatus.RUNNING
    waiter = SimpleNamespace(holder="t01", pool="anthropic", position=1, estimated_wait_s=2.5,
                             waited_s=4.0)
    pool = SimpleNamespace(name="anthropic", leases=2, waiting=1, calls_in_use=2, concurrent=50,
                           tokens_available=1000.0, tokens_per_minute=400_000, grants=9,
                           expired=1)
    stats = SimpleNamespace(waiters=(waiter,), pools={"anthropic": pool})
    model = SimpleNamespace(model="opus", state="unavailable", calls=4, success_rate=0.25,
                            error_rate=0.75, mean_latency_s=3.0)
    view = dataclasses.replace(
        orch.view,
        allocator=cast(Any, SimpleNamespace(statistics=lambda: stats)),
        health=cast(Any, SimpleNamespace(
            statistics=lambda: SimpleNamespace(models={"opus": model}))),
        controller=cast(Any, SimpleNamespace(is_paused=lambda task_id: task_id == "t02",
                                             pause_info=lambda task_id: None)),
    )
    orch.handles["t03"].status = TaskStatus.DEFERRED

    async def take() -> Snapshot:
        await orch.open()
        try:
            for h in orch.handles.values():
                await orch.tracker.start_task(h.id, h.profile, agent=h.spec.agent)
            return snapshot_of(view, now=0.0)
        finally:
            await orch.aclose()

    snap = await take()
    by_id = {t.task_id: t for t in snap.tasks}
    assert (by_id["t01"].status, by_id["t01"].queue_position,
            by_id["t01"].estimated_wait_s) == ("waiting", 1, 2.5)
    assert by_id["t02"].status == "paused" and by_id["t03"].status == "deferred"
    assert snap.pools[0].leases == 2 and snap.models[0].state == "unavailable"


async def test_r3_1_hot_task_budgets_appear_in_the_snapshot(tmp_path: Path) -> None:
    """R3.1: a live task's dimensions at or above 70 % join the session and day bars."""
    from scheduler import TaskSpec, Usage

    orch = demo_orchestrator(tmp_path, tasks=0)
    orch.add_tasks([TaskSpec(id="hot", agent="qa", prompt="What is this?",
                             budget={"tokens": 1000}),
                    TaskSpec(id="done", agent="qa", prompt="What is this?",
                             budget={"tokens": 1000})])

    async def take() -> Snapshot:
        await orch.open()
        try:
            for tid in ("hot", "done"):
                h = orch.handles[tid]
                h.status = TaskStatus.RUNNING
                await orch.tracker.start_task(tid, h.profile, agent="qa")
                await orch.tracker.charge(orch.tracker.make_event(
                    tid, model="haiku", usage=Usage(500, 300), cost_usd=0.001))
            orch.handles["done"].status = TaskStatus.COMPLETED
            return snapshot_of(orch.view, now=0.0)
        finally:
            await orch.aclose()

    snap = await take()
    task_bars = [b for b in snap.budgets if b.scope.startswith("task:")]
    assert [(b.scope, b.dimension, b.level) for b in task_bars] == [
        ("task:hot", "tokens", "warning")]
    assert {t.task_id: round(t.budget_fraction, 2) for t in snap.tasks} == {
        "hot": 0.8, "done": 0.8}


def test_r7_2_status_json_written_row_by_row_is_the_snapshot() -> None:
    """R7.2: ``status.json`` is written a task row at a time (a huge run holds no full
    document); parsed back it is exactly :meth:`Snapshot.to_dict`, even when a task id or
    an event's message holds the text that marks where the rows go."""
    snap = crafted_snapshot()
    odd = dataclasses.replace(snap.tasks[0], task_id='x"tasks": []', reason='"tasks": []')
    snap = dataclasses.replace(snap, tasks=(*snap.tasks, odd))
    out = io.StringIO()
    snap.write_json(out)
    assert json.loads(out.getvalue()) == json.loads(json.dumps(snap.to_dict(), default=str))
    assert Snapshot.from_dict(json.loads(out.getvalue())) == snap


def test_r7_2_status_json_of_a_run_larger_than_one_write_is_the_snapshot() -> None:
    """R7.2: rows are encoded a few hundred at a time; a run of 0, 1 and several such
    writes' worth of tasks (the edges between them too) still parses back to exactly
    :meth:`Snapshot.to_dict`."""
    snap = crafted_snapshot()
    for n in (0, 1, 31, 32, 33, 700):
        rows = tuple(dataclasses.replace(snap.tasks[0], task_id=f"t{i}") for i in range(n))
        big = dataclasses.replace(snap, tasks=rows)
        out = io.StringIO()
        big.write_json(out)
        assert json.loads(out.getvalue()) == json.loads(json.dumps(big.to_dict(), default=str))


def test_r7_2_history_records_hold_events_as_json_gives_them_back(tmp_path: Path) -> None:
    """R7.2: a ``history`` record holds an event as JSON gives it back: plain values as
    they are (no encoding round trip for them), others (a path, a tuple) as JSON
    encodes them, whichever way the record was made."""
    orch = demo_orchestrator(tmp_path, tasks=1, time_scale=0.01)

    async def records() -> dict[str, dict[str, Any]]:
        await orch.open()
        try:
            orch.bus.emit("plain_event", "m", task_id="t", n=1, x=0.5, ok=True, none=None)
            orch.bus.emit("odd_event", "m", where=Path("/a/b"), pair=(1, 2))
            assert orch.observers.history is not None
            await orch.observers.history.flush()
            return await orch.store.list_state("history")
        finally:
            await orch.aclose()

    by_name = {r["name"]: r for r in run_virtual(records).values()}
    assert by_name["plain_event"]["data"] == {"n": 1, "x": 0.5, "ok": True, "none": None}
    assert by_name["plain_event"]["task_id"] == "t"
    assert by_name["odd_event"]["data"] == {"where": "/a/b", "pair": [1, 2]}
