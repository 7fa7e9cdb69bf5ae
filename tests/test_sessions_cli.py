"""Sessions through the command line: ``run`` twice, ``kill -9`` then ``resume``, one
orchestrator per state directory, exit codes (issue #18, R1.5, R2.6, R3.4, R7.2)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent / "vibe-engine")
ENV = {**{k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}, "COLUMNS": "200"}

pytestmark = pytest.mark.slow

#: Simulated calls of 0.4 s that never fail; a step worker (a call, a file, a checkpoint
#: per step) with many steps; one whose tiny budget pauses it for a decision; a task that
#: waits for the long one.
KILL_CONFIG = """
state_dir = "{state}"
store = "sqlite"

[provider]
kind = "simulated"

[provider.simulated]
latency_s = {{ haiku = 0.4, sonnet = 0.4, opus = 0.4 }}
failure_rate = {{ haiku = 0.0, sonnet = 0.0, opus = 0.0 }}

[[tasks]]
id = "quick"
agent = "qa"
prompt = "Where is the config loaded?"
priority = "user_waiting"

[[tasks]]
id = "long"
agent = "steps"
prompt = "Fix the off-by-one error in pagination"
params = {{ steps = 10 }}

[[tasks]]
id = "tight"
agent = "steps"
prompt = "Fix the crash in the parser"
budget = {{ tokens = 500 }}

[[tasks]]
id = "after"
agent = "qa"
prompt = "Summarise the pagination fix"
depends_on = ["long"]
"""


def _cli(*args: str, cwd: Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _status(state: Path) -> dict[str, Any]:
    out = _cli("status", "--state-dir", str(state), "--json")
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _tasks(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for t in status["tasks"]}


def _state(db: Path, kind: str) -> dict[str, Any]:
    """State records straight from SQLite (read-only; the orchestrator may be writing)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT key, value FROM state WHERE kind = ?",
                                (kind,)).fetchall()
    except sqlite3.OperationalError:  # the run has not created its tables yet
        return {}
    return {k: json.loads(v) for k, v in rows}


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[str],
          timeout_s: float = 60) -> None:
    """Poll ``ready`` while ``proc`` runs (its ``wait`` is the pause between polls)."""
    for _ in range(int(timeout_s / 0.2)):
        if ready():
            return
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"process ended ({proc.returncode}) before {what}: "
                             f"{proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError(f"timed out waiting for {what}")


def _session_calls(db: Path, session: str) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute("SELECT task_id, COUNT(*) FROM events WHERE session_id = ? AND "
                            "model != '' GROUP BY task_id", (session,)).fetchall()
    return dict(rows)


def test_rerunning_the_tutorial_config_shows_the_second_runs_own_figures(
    tmp_path: Path,
) -> None:
    """Issue #18: the tutorial's own next step, run it again: the second run's task rows
    are its own (not 200 %), while the day's spend accumulates across both (R1.5)."""
    config = ROOT / "docs" / "examples" / "tutorial.toml"
    state = tmp_path / ".vibe-engine-tutorial"
    figures = []
    for _ in range(2):
        run = _cli("run", str(config), "--no-live", "--log-level", "warning", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        status = _status(state)
        figures.append((status["session_id"], {t: (v["status"], v["calls"], v["tokens"])
                                               for t, v in _tasks(status).items()}))
    (first, tasks1), (second, tasks2) = figures
    assert first != second  # a plain run starts a new session
    assert all(status == "completed" for status, _, _ in tasks2.values())
    with sqlite3.connect(state / "vibe.db") as conn:
        own = dict(conn.execute(
            "SELECT task_id, SUM(prompt_tokens + completion_tokens + cache_read_tokens + "
            "cache_write_5m_tokens + cache_write_1h_tokens) FROM events WHERE session_id = ? "
            "GROUP BY task_id", (second,)).fetchall())
        day = conn.execute("SELECT SUM(prompt_tokens + completion_tokens + cache_read_tokens"
                           " + cache_write_tokens) FROM totals WHERE scope LIKE 'day:%'"
                           ).fetchone()[0]
    assert {t: tokens for t, (_, _, tokens) in tasks2.items()} == own  # its own figures
    for t, (_, calls, tokens) in tasks2.items():  # the same work again, not added to run 1
        assert calls == tasks1[t][1] and tokens < 1.5 * tasks1[t][2]
    assert day == sum(v[2] for v in tasks1.values()) + sum(v[2] for v in tasks2.values())


def test_kill_9_then_resume_continues_the_interrupted_session(tmp_path: Path) -> None:
    """Issue #18: SIGKILL a real ``vibe-engine run``; ``status`` lists every task (completed,
    interrupted, paused, pending); ``resume`` skips the completed task (its result kept),
    continues the interrupted one from its checkpoint, keeps the paused one paused until
    ``decide``, then runs the pending one; exit 1 as a task was stopped on its budget."""
    state = tmp_path / "st"
    config = tmp_path / "kill.toml"
    config.write_text(KILL_CONFIG.format(state=state), encoding="utf-8")
    db = state / "vibe.db"
    proc = subprocess.Popen([BIN, "run", str(config), "--no-live", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=ENV)

    def checkpointed() -> bool:
        if not db.exists():
            return False
        tasks = {k.rpartition("/")[2]: v for k, v in _state(db, "task").items()}
        long = [v for k, v in _state(db, "checkpoint").items() if k.endswith("/long")]
        paused = [v for v in _state(db, "pause").values() if v.get("state") == "paused"]
        return (tasks.get("quick", {}).get("status") == "completed" and bool(paused)
                and bool(long) and long[0]["step"] >= 3)

    try:
        _wait("long's third checkpoint", checkpointed, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    session = next(iter(_state(db, "session")))
    before = _session_calls(db, session)

    offline = _status(state)
    assert offline["session_id"] == session and offline["source"] == "store"
    tasks = _tasks(offline)
    assert {t: v["status"] for t, v in tasks.items()} == {
        "quick": "completed", "long": "interrupted", "tight": "paused", "after": "pending"}
    assert "simulated answer" in tasks["quick"]["result"]

    resumed = subprocess.Popen([BIN, "resume", "--state-dir", str(state), "--no-live",
                                "--log-level", "warning"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        def tight_paused_and_rest_done() -> bool:
            live = _tasks(_status(state))
            return (live.get("tight", {}).get("status") == "paused"
                    and live.get("after", {}).get("status") == "completed")

        _wait("the resumed run to pause tight again", tight_paused_and_rest_done, resumed)
        live = _status(state)
        assert live["source"] == "orchestrator" and live["session_id"] == session
        assert _tasks(live)["quick"]["result"] == tasks["quick"]["result"]  # kept, not re-run
        decided = _cli("decide", "tight", "finish", "--state-dir", str(state))
        assert decided.returncode == 0, decided.stderr
        out, err = resumed.communicate(timeout=60)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.communicate()
    assert resumed.returncode == 1, err  # tight was stopped on its budget
    assert session in out

    after = _session_calls(db, session)
    assert after["quick"] == before["quick"] == 1  # not run again
    # long continued from its checkpoint: 10 steps in all (one more at most if a step's
    # call was charged just before its checkpoint when the process was killed)
    assert 10 <= after["long"] <= 11
    final = _tasks(_status(state))
    assert {t: v["status"] for t, v in final.items()} == {
        "quick": "completed", "long": "completed", "tight": "finished", "after": "completed"}
    assert final["quick"]["result"] == tasks["quick"]["result"]
    assert final["long"]["result"]["step"] == 10
    result = json.loads((state / "tasks" / "long" / "result.json").read_text("utf-8"))
    assert result["session_id"] == session and result["result"]["step"] == 10
    nothing_left = _cli("resume", "--state-dir", str(state))
    assert nothing_left.returncode == 2 and "no interrupted session" in nothing_left.stderr


#: One question whose simulated call takes a minute: killed while it is in flight.
SLOW_CALL_CONFIG = """
state_dir = "{state}"

[provider.simulated]
latency_s = {{ haiku = 60.0, sonnet = 60.0, opus = 60.0 }}
failure_rate = {{ haiku = 0.0, sonnet = 0.0, opus = 0.0 }}

[[tasks]]
id = "asking"
agent = "qa"
prompt = "Where is the config loaded?"
"""


def test_r1_5_status_calls_a_task_killed_during_its_first_call_interrupted(
    tmp_path: Path,
) -> None:
    """R1.5, issue #18: a run SIGKILLed while a task's first call is in flight has charged
    that task nothing yet; ``status`` still shows it ``interrupted`` (it ran, and
    ``resume`` runs it again), not ``pending`` as if it never started."""
    state = tmp_path / "st"
    config = tmp_path / "slow.toml"
    config.write_text(SLOW_CALL_CONFIG.format(state=state), encoding="utf-8")
    db = state / "vibe.db"
    proc = subprocess.Popen([BIN, "run", str(config), "--no-live", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=ENV)

    def in_flight() -> bool:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                return bool(conn.execute("SELECT 1 FROM open_calls").fetchall())
        except sqlite3.OperationalError:  # not created yet
            return False

    try:
        _wait("the call in flight", in_flight, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    task = _tasks(_status(state))["asking"]
    assert (task["status"], task["calls"]) == ("interrupted", 0)


def test_a_second_orchestrator_on_the_same_state_directory_refuses_to_start(
    tmp_path: Path,
) -> None:
    """Issue #18: one orchestrator per state directory; the second exits 2 with one line
    naming the directory and the running process, and the first runs to its end.  The
    first is held open by a task paused at its budget (no decision timeout), whatever
    the machine's speed, and is let go by ``decide`` once the second has been refused."""
    state = tmp_path / "st"
    config = tmp_path / "kill.toml"
    config.write_text(KILL_CONFIG.format(state=state), encoding="utf-8")
    db = state / "vibe.db"
    first = subprocess.Popen([BIN, "run", str(config), "--no-live", "--log-level", "warning"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=ENV)
    try:
        _wait("the first run's pause", lambda: db.exists() and any(
            v.get("state") == "paused" for v in _state(db, "pause").values()), first)
        second = _cli("run", str(config), "--no-live")
        assert first.poll() is None  # still paused: nobody decided
        decided = _cli("decide", "tight", "add", "--tokens", "200000",
                       "--state-dir", str(state))
        assert decided.returncode == 0, decided.stderr
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert str(state) in lines[0] and f"pid {first.pid}" in lines[0]
    assert first.returncode == 0, err


def test_run_exit_codes_and_a_session_id_that_already_ran(tmp_path: Path) -> None:
    """Issue #18: ``run`` exits 1 when a task was stopped on its budget (saved and finished
    after the decision timeout) and 2, with one line, for a config whose session_id already
    ran in the state directory (``resume`` continues it)."""
    state = tmp_path / "st"
    config = tmp_path / "budget.toml"
    config.write_text(f"""
state_dir = "{state}"
session_id = "nightly"
alerts = {{ decision_timeout_s = 0.5 }}

[provider.simulated]
time_scale = 0.01
failure_rate = {{ haiku = 0.0, sonnet = 0.0, opus = 0.0 }}

[[tasks]]
id = "tight"
agent = "steps"
prompt = "Fix the crash in the parser"
budget = {{ tokens = 500 }}
""", encoding="utf-8")
    run = _cli("run", str(config), "--no-live", "--log-level", "warning")
    assert run.returncode == 1, run.stderr
    assert "finished" in run.stdout
    again = _cli("run", str(config), "--no-live")
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "vibe-engine resume nightly" in again.stderr


def test_r7_2_a_session_begun_before_ids_were_checked_still_resumes(tmp_path: Path) -> None:
    """A session id a config may no longer name (``nightly run``: ids take a task id's
    characters now) was valid when its session began: ``resume`` continues it under that
    id rather than refusing the stored config."""
    import tomllib

    import anyio

    from agents import discover_agents, make_provider
    from scheduler import VibeConfig
    from scheduler.runtime import Orchestrator

    state = tmp_path / "st"
    text = f"""
state_dir = "{state}"
alerts = {{ decision_timeout_s = 0.5 }}
[provider.simulated]
time_scale = 0.01
failure_rate = {{ haiku = 0.0, sonnet = 0.0, opus = 0.0 }}
[[tasks]]
id = "tight"
agent = "steps"
prompt = "Fix the crash in the parser"
budget = {{ tokens = 500 }}
"""
    with pytest.raises(ValueError, match="session_id"):
        VibeConfig.model_validate({**tomllib.loads(text), "session_id": "nightly run"})
    config = VibeConfig.model_validate({**tomllib.loads(text), "session_id": "nightly run"},
                                       context={"resuming": True})
    orch = Orchestrator(config, provider=make_provider(config), agents=discover_agents())
    anyio.run(orch.run)
    resumed = _cli("resume", "nightly run", "--state-dir", str(state), "--no-live",
                   "--log-level", "warning")
    assert resumed.returncode == 1, resumed.stderr  # tight stopped on its budget again
    assert "session_id" not in resumed.stderr
