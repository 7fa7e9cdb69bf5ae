"""What the governed path does per call and per task (#22), through the orchestrator:
``usage.json`` written when a task ends (not at its first charge) and current then (R2.6),
no per-call line at info level (R2.3), the local date without a time-zone lookup (R1.2),
and no store round trips for pauses a task never had (R3.4)."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog

from scheduler import Limits, TaskSpec, Usage, VibeConfig
from scheduler.budget import Tracker, resolve_task
from scheduler.budget._scopes import TaskEntry
from scheduler.core import SystemWallClock
from scheduler.observe import put_states
from scheduler.runtime import AgentContext
from scheduler.store import MemoryStore, SqliteStore, session_task_totals, task_key
from scheduler.testing import ScriptedProvider
from tests._helpers import OrchestratorFactory

HI = [{"role": "user", "content": "hi"}]


class TwoCalls:
    """Two calls; after the first, notes whether ``usage.json`` exists already."""

    seen_after_first: list[bool] = []

    async def run(self, ctx: AgentContext) -> str:
        await ctx.llm.complete(HI, max_tokens=64)
        folder = ctx.workspace.parent.parent / "tasks" / ctx.task.id
        type(self).seen_after_first.append((folder / "usage.json").exists())
        await ctx.llm.complete(HI, max_tokens=64)
        return "done"


# the SQLite store and the end-of-task file writes run in worker threads on asyncio
@pytest.mark.real_asyncio
async def test_r2_6_usage_json_is_written_when_the_task_ends_and_current_then(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: a task shorter than the rewrite interval does not write ``usage.json`` at its
    first charge; when ``task_completed`` is announced the file (written off the loop)
    already holds both calls, equal to the store, and ``result.json`` is there."""
    TwoCalls.seen_after_first = []
    config = VibeConfig.model_validate({"state_dir": tmp_path, "store": "sqlite",
                                        "session_id": "s1"})
    orch = make_orchestrator({"a": TwoCalls}, config=config,
                             provider=ScriptedProvider(latency_s=0.0))
    at_end: list[dict[str, Any]] = []
    folder = tmp_path / "tasks" / "t1"

    def on_event(event: Any) -> None:
        if event.name == "task_completed":
            at_end.append(json.loads((folder / "usage.json").read_text()))
            at_end.append(json.loads((folder / "result.json").read_text()))

    orch.bus.subscribe(on_event)
    report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status == "completed"
    assert TwoCalls.seen_after_first == [False]
    usage, result = at_end
    assert usage["usage"]["calls"] == 2 and usage["status"] == "completed"
    assert usage["usage"] == report.outcomes["t1"].usage.to_dict()  # what the store holds
    assert result["result"] == "done"


class CallsThenWaits:
    """At 0.9 s a call, then waits; at 2.5 s a call, then waits: notes ``usage.json``
    (``None`` while there is none) after each call and each wait."""

    seen: list[dict[str, Any] | None] = []

    async def run(self, ctx: AgentContext) -> str:
        path = ctx.workspace.parent.parent / "tasks" / ctx.task.id / "usage.json"

        def note() -> None:
            type(self).seen.append(json.loads(path.read_text()) if path.exists() else None)

        await anyio.sleep(0.9)
        for waits in ((0.6, 1.0), (2.5,)):
            await ctx.llm.complete(HI, max_tokens=64)
            note()
            for wait in waits:
                await anyio.sleep(wait)
                note()
        return "done"


async def test_r2_6_a_running_tasks_usage_json_is_at_most_one_interval_behind(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: while a task runs, a flush every second rewrites its ``usage.json`` once it
    was charged and its last write (or first charge) is a second old -- the charge itself
    writes nothing -- so the file is about one interval behind the store; the file stays
    readable, one top-level key per line."""
    CallsThenWaits.seen = []
    config = VibeConfig.model_validate({"state_dir": tmp_path, "session_id": "s1"})
    orch = make_orchestrator({"a": CallsThenWaits}, config=config,
                             provider=ScriptedProvider(latency_s=0.0))
    report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status == "completed"
    first_call, at_1_5, at_2_5, second_call, at_5 = CallsThenWaits.seen
    assert first_call is None  # not written by the charge
    assert at_1_5 is None  # the flush at 1 s came 0.1 s after the first charge
    assert at_2_5 is not None and at_2_5["usage"]["calls"] == 1  # the flush at 2 s
    assert at_2_5["status"] == "running"
    assert second_call is not None and second_call["usage"]["calls"] == 1  # one behind
    assert at_5 is not None and at_5["usage"]["calls"] == 2  # the flush at 3 s
    lines = (tmp_path / "tasks" / "t1" / "usage.json").read_text().splitlines()
    assert lines[1].startswith('  "task_id": ') and len(lines) == len(at_5) + 2


async def test_r2_3_the_estimate_discrepancy_is_logged_at_debug_only(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.3: a > 10 % estimate error is still logged, but at debug level: a run at the
    default info level writes no line per call."""
    orch = make_orchestrator({"a": TwoCalls}, provider=ScriptedProvider(prompt=500))
    with structlog.testing.capture_logs() as logs:
        report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status == "completed"
    found = [e for e in logs if e["event"] == "token_estimate_discrepancy"]
    assert found  # the first call; calibration makes the second one closer
    assert {e["log_level"] for e in found} == {"debug"}


def test_r1_2_the_local_date_is_read_without_a_time_zone_lookup() -> None:
    """R1.2: the day a charge belongs to is the local date, as ``now().date()`` says."""
    wall = SystemWallClock()
    before = datetime.now().astimezone().date()
    today = wall.today()
    assert today in (before, datetime.now().astimezone().date())


def test_r2_1_an_events_wall_time_is_read_without_a_time_zone_lookup() -> None:
    """R2.1: the wall-clock time an event records is ``now().timestamp()``."""
    wall = SystemWallClock()
    before = datetime.now().astimezone().timestamp()
    at = wall.timestamp()
    assert before <= at <= datetime.now().astimezone().timestamp()


def test_r1_2_the_local_date_is_reused_within_its_day_and_never_across_midnight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R1.2: a governed call asks for the local date a dozen times: the time-zone lookup
    is made once per local day, yet every call compares the wall clock with that day's
    bounds, so a charge a microsecond after midnight counts toward the new day, and a
    wall clock set back (or forward by days) is seen at once."""
    import scheduler.core._clock as clock_module

    at = [datetime(2026, 11, 27, 12, 0).timestamp()]
    monkeypatch.setattr(clock_module, "_epoch", lambda: at[0])
    looked_up: list[float] = []  # one entry per time-zone lookup of a day's bounds
    day_of = SystemWallClock._day_of

    def counting(self: SystemWallClock, now: float) -> date:
        looked_up.append(now)
        return day_of(self, now)

    monkeypatch.setattr(SystemWallClock, "_day_of", counting)
    wall = SystemWallClock()
    assert {wall.today() for _ in range(12)} == {date(2026, 11, 27)}
    assert len(looked_up) == 1
    at[0] = datetime(2026, 11, 27, 23, 59, 59, 999_000).timestamp()
    assert wall.today() == date(2026, 11, 27) and len(looked_up) == 1
    at[0] = datetime(2026, 11, 28, 0, 0, 0, 1).timestamp()
    assert wall.today() == date(2026, 11, 28)
    at[0] = datetime(2026, 11, 26, 18, 0).timestamp()  # the clock set back a day
    assert wall.today() == date(2026, 11, 26)
    at[0] = datetime(2026, 12, 25, 9, 0).timestamp()
    assert wall.today() == date(2026, 12, 25)
    assert len(looked_up) == 4


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[tuple[str, str]] = []

    async def delete_state(self, kind: str, key: str) -> None:
        self.deleted.append((kind, key))
        await super().delete_state(kind, key)


async def test_r3_4_a_task_that_never_paused_deletes_no_pause_records(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R3.4: ending a task forgets a pause that never took effect; a task that was never
    paused costs no store round trip for it (the records cannot exist)."""
    store = CountingStore()
    orch = make_orchestrator({"a": TwoCalls}, store=store)
    report = await orch.run([TaskSpec(id=f"t{i}", agent="a", prompt="x") for i in range(3)])
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    assert [k for k, _ in store.deleted if k in ("pause", "decision")] == []


async def test_r3_4_a_pause_that_never_took_effect_is_removed_when_the_task_ends(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R3.4: a pause requested after the task's last safe point never takes effect; the
    task completes and its pause record leaves the store."""
    store = CountingStore()
    controllers: list[Any] = []

    class PausedLate:
        async def run(self, ctx: AgentContext) -> str:
            await ctx.llm.complete(HI, max_tokens=64)
            await controllers[0].request_pause(ctx.task.id, "requested too late")
            return "done"

    orch = make_orchestrator({"a": PausedLate}, store=store)
    controllers.append(orch.controller)
    report = await orch.run([TaskSpec(id="t1", agent="a", prompt="x")])
    assert report.outcomes["t1"].status == "completed"
    assert ("pause", task_key("s1", "t1")) in store.deleted
    assert await store.get_state("pause", task_key("s1", "t1")) is None


class Idle:
    async def run(self, ctx: AgentContext) -> None:
        return None


class CountingEvents(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.queried: list[str | None] = []

    async def events(self, *, task_id: str | None = None, day_from: str | None = None,
                     day_to: str | None = None) -> list[Any]:
        self.queried.append(task_id)
        return await super().events(task_id=task_id, day_from=day_from, day_to=day_to)


async def test_r2_6_the_report_reads_the_events_of_tasks_that_charged_only(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: the run's report sums each task's events from the store; a task that charged
    nothing costs no read (its tracked totals are empty), and the usage reported for the
    others is still what the store holds."""
    store = CountingEvents()
    orch = make_orchestrator({"idle": Idle, "a": TwoCalls}, store=store)
    report = await orch.run([TaskSpec(id="i1", agent="idle", prompt="x"),
                             TaskSpec(id="i2", agent="idle", prompt="x"),
                             TaskSpec(id="c1", agent="a", prompt="x")])
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    assert [t for t in store.queried if t in ("i1", "i2")] == []
    assert report.outcomes["i1"].usage.calls == 0
    assert report.outcomes["c1"].usage.calls == 2
    assert report.outcomes["c1"].usage.to_dict() == (
        await session_task_totals(store, "s1", "c1")).to_dict()


# the SQLite store's group commit and the files' worker-thread hops exist on asyncio only
@pytest.mark.real_asyncio
async def test_r2_6_tasks_ending_together_share_commits_and_file_writes(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: 40 tasks that end together write their records (at start and at the end) in
    far fewer SQLite commits than writes, and every task still has its
    ``usage.json`` and its record when the run returns (its agent returned nothing: no
    ``result.json``)."""
    config = VibeConfig.model_validate({"state_dir": tmp_path, "store": "sqlite",
                                        "session_id": "s1"})
    orch = make_orchestrator({"idle": Idle}, config=config)
    ids = [f"t{i}" for i in range(40)]
    report = await orch.run([TaskSpec(id=t, agent="idle", prompt="x") for t in ids])
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    group = orch.store.group  # type: ignore[attr-defined]  # the SqliteStore's
    # each task's record at its end is a write of its own; the records of the run's start
    # (and the history of tasks ending together) are one write each burst
    assert len(ids) <= group.writes <= 2 * len(ids), group.writes
    assert group.batches <= group.writes / 4, (group.batches, group.writes)
    await orch.store.open()  # closed by the run: open again to read it
    records = await orch.store.list_state("task")
    await orch.store.aclose()
    assert {r["status"] for r in records.values()} == {"completed"} and len(records) == 40
    for t in ids:
        folder = tmp_path / "tasks" / t
        assert json.loads((folder / "usage.json").read_text())["status"] == "completed"
        assert not (folder / "result.json").exists()


async def test_r7_1_waiting_for_a_task_that_already_ended_returns_at_once(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R7.1: a task's ``done`` event is made only when someone waits; waiting after the
    task ended (a dependency that finished long ago) still returns at once."""
    orch = make_orchestrator({"idle": Idle})
    await orch.run([TaskSpec(id="t1", agent="idle", prompt="x")])
    handle = orch.handles["t1"]
    with anyio.fail_after(1):
        await handle.done.wait()
    assert handle.done.is_set()


class Returns:
    """Returns what the task's ``params.value`` holds (``None`` when it holds nothing)."""

    async def run(self, ctx: AgentContext) -> Any:
        return ctx.task.params.get("value")


# the end-of-task file writes run in a worker thread on asyncio
@pytest.mark.real_asyncio
async def test_r2_6_result_json_holds_what_the_agent_returned_and_is_not_left_stale(
    tmp_path: Path, make_orchestrator: OrchestratorFactory,
) -> None:
    """R2.6: a completed task's ``result.json`` (written with its ``usage.json``) holds
    what its agent returned; an agent that returned nothing leaves no file, and a file an
    earlier session's run of the task left is removed (``report`` would link it)."""
    folder = tmp_path / "tasks" / "t1"

    async def run(session: str, value: Any) -> None:
        config = VibeConfig.model_validate({"state_dir": tmp_path, "store": "sqlite",
                                            "session_id": session})
        orch = make_orchestrator({"r": Returns}, config=config)
        spec = TaskSpec(id="t1", agent="r", prompt="x", params={"value": value})
        report = await orch.run([spec])
        assert report.outcomes["t1"].status == "completed"
        assert json.loads((folder / "usage.json").read_text())["session_id"] == session

    await run("s1", {"files": 2})
    assert json.loads((folder / "result.json").read_text()) == {
        "task_id": "t1", "session_id": "s1", "result": {"files": 2}}
    await run("s2", None)
    assert not (folder / "result.json").exists()
    await run("s3", None)  # nothing to remove
    assert not (folder / "result.json").exists()


# the files' worker-thread hop exists on asyncio only: the flush must be under way
@pytest.mark.real_asyncio
async def test_r2_6_a_file_written_behind_a_flush_is_not_written_again_at_the_end(
    tmp_path: Path,
) -> None:
    """R2.6: a task ending while a flush's hop is under way writes its final file in the
    next hop (never overtaken by the flush's older document), so the run's end does not
    write it again; a file written in line meanwhile (a pause) is written again."""
    config = VibeConfig.model_validate({"state_dir": tmp_path, "session_id": "s1"})
    tr = Tracker(MemoryStore(), config, session_id="s1", wall=SystemWallClock(),
                 state_dir=tmp_path, usage_json_interval_s=1e-9)
    await tr.open()
    for tid in ("t1", "t2"):
        await tr.start_task(tid, resolve_task(TaskSpec(id=tid, agent="a", prompt="x"), config))
        await tr.charge(tr.make_event(tid, model="sonnet", usage=Usage(10, 5)))
    await anyio.sleep(0.01)  # both files due at the next flush
    async with anyio.create_task_group() as tg:
        tg.start_soon(tr.flush_dirty_usage)
        await anyio.lowlevel.checkpoint()  # the flush's hop is under way
        tg.start_soon(tr.end_task, "t1")  # queued behind it
        tr.write_usage("t2")  # in line: the flush's document may land after it
    files = {tid: tmp_path / "tasks" / tid / "usage.json" for tid in ("t1", "t2")}
    assert json.loads(files["t1"].read_text())["status"] == "completed"
    for path in files.values():
        path.unlink()
    tr.write_usage()  # the run's end: only files that may be stale
    assert not files["t1"].exists()
    assert files["t2"].exists()


class SlowFlushes(Tracker):
    """A tracker whose flushes of the running tasks' files take 0.2 s each."""

    started: list[float] = []

    async def flush_dirty_usage(self) -> int:
        self.started.append(anyio.current_time())
        await anyio.sleep(0.2)
        return 0


async def test_r2_6_slow_flushes_of_usage_json_take_about_a_twentieth_of_the_time() -> None:
    """R2.6: the periodic flush of running tasks' ``usage.json`` comes every interval
    while it is quick; one that took 0.2 s (thousands of files, a slow disk) is followed
    by a wait of 20 times that, so rewriting the files takes about 5 % of the time."""
    config = VibeConfig.model_validate({"session_id": "s1"})
    tr = SlowFlushes(MemoryStore(), config, session_id="s1", usage_json_interval_s=1.0)
    tr.started = []
    start = anyio.current_time()
    with anyio.move_on_after(10):
        await tr.flush_usage()
    assert [round(t - start, 1) for t in tr.started] == [1.0, 5.2, 9.4]


@pytest.mark.real_asyncio  # the SQLite store's group commit
async def test_r2_6_a_burst_of_state_records_is_one_write_and_a_bad_one_fails_alone(
    tmp_path: Path,
) -> None:
    """R2.6: ``put_states`` hands the SQLite store a burst of records at once -- one write
    of its group commit, one transaction -- and a record JSON cannot hold fails alone,
    raised after the others were written."""
    store = SqliteStore(tmp_path / "vibe.db")
    await store.open()
    try:
        records = [(f"k{i}", {"i": i}) for i in range(100)]
        await put_states(store, "history", records)
        assert (store.group.batches, store.group.writes) == (1, 1)
        with pytest.raises(TypeError):
            await put_states(store, "history", [("bad", {"x": object()}), ("ok", {"i": 1})])
        stored = await store.list_state("history")
        assert stored["k99"] == {"i": 99} and stored["ok"] == {"i": 1} and "bad" not in stored
    finally:
        await store.aclose()


class Fails:
    async def run(self, ctx: AgentContext) -> None:
        raise RuntimeError("broken agent")


async def test_issue22_a_completed_task_logs_at_debug_and_the_run_one_summary(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """#22: a run at info level logs no line per completed task, but one ``run_ended``
    line with the count of each ending; an unsuccessful task still logs its warning and
    every task's event still reaches the bus's subscribers."""
    orch = make_orchestrator({"a": TwoCalls, "bad": Fails},
                             provider=ScriptedProvider(latency_s=0.0))
    seen: list[str] = []
    orch.bus.subscribe(lambda e: seen.append(e.name))
    specs = [TaskSpec(id=f"t{i}", agent="a", prompt="x") for i in range(3)]
    with structlog.testing.capture_logs() as logs:
        report = await orch.run([*specs, TaskSpec(id="b", agent="bad", prompt="x")])
    assert [o.status for o in report.outcomes.values()] == ["completed"] * 3 + ["failed"]
    assert seen.count("task_completed") == 3
    completed = [e for e in logs if e["event"] == "task_completed"]
    assert len(completed) == 3 and {e["log_level"] for e in completed} == {"debug"}
    assert [e["log_level"] for e in logs if e["event"] == "task_failed"] == ["warning"]
    (ended,) = [e for e in logs if e["event"] == "run_ended"]
    assert ended["log_level"] == "info"
    assert (ended["tasks"], ended["by_status"]) == (4, {"completed": 3, "failed": 1})


def _usage_document(task_id: str, entry: TaskEntry, timestamp: str) -> dict[str, Any]:
    """What ``usage.json`` holds for ``entry`` (R2.6), built from the task's state."""
    doc = {
        "task_id": task_id, "session_id": "s1", "agent": entry.agent,
        "task_type": entry.profile.task_type, "complexity": entry.profile.complexity,
        "status": entry.status, "usage": entry.scope.totals.to_dict(),
        "budget": entry.scope.limits.model_dump(mode="json", exclude_none=True),
        "timestamp": timestamp,
    }
    day = entry.day_scope
    if entry.day_root == task_id and day is not None:
        doc["day_budget"] = {"scope": day.name,
                             "budget": day.limits.model_dump(mode="json", exclude_none=True)}
    return doc


async def test_r2_6_usage_json_text_is_its_document_as_budgets_change(tmp_path: Path) -> None:
    """R2.6: the text ``usage.json`` gets is its document's, one key per line -- for a task
    with the shared limits of its type, one with its own, one with a per-day budget, and
    after a person added budget (the new limits, not the text of the old ones)."""
    config = VibeConfig.model_validate({"state_dir": tmp_path, "session_id": "s1"})
    tr = Tracker(MemoryStore(), config, session_id="s1", wall=SystemWallClock(),
                 state_dir=tmp_path)
    await tr.open()
    specs = [TaskSpec(id="plain", agent="a", prompt="fix the bug"),
             TaskSpec(id="same", agent="a", prompt="fix the crash"),
             TaskSpec(id="own", agent="a", prompt="x", budget={"tokens": 1234}),
             TaskSpec(id="daily", agent="a", prompt="x", day_budget={"cost_usd": 2.0})]
    for spec in specs:  # an agent name JSON must escape
        await tr.start_task(spec.id, resolve_task(spec, config), agent='agént "a"')
    await tr.charge(tr.make_event("plain", model="sonnet", usage=Usage(10, 5)))
    files, entries = tr._files, tr._scopes.tasks

    def check(tid: str) -> dict[str, Any]:
        entry = entries[tid]
        text = files.text(tid, entry)
        doc = _usage_document(tid, entry, json.loads(text)["timestamp"])
        assert json.loads(text) == doc
        # one top-level key per line, nested objects on their key's line, strings
        # escaped and floats written as ``json.dumps`` does
        assert text == "{\n" + ",\n".join(
            f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()) + "\n}\n"
        return doc

    docs = {spec.id: check(spec.id) for spec in specs}
    assert docs["plain"]["usage"]["prompt_tokens"] == 10
    assert docs["own"]["budget"]["tokens"] == 1234
    assert docs["daily"]["day_budget"]["budget"] == {"cost_usd": 2.0, "tokens_by_model": {}}
    tr.raise_limits(tr.task_scope("plain"), Limits(tokens=1000))
    day = tr.own_day_scope("daily")
    assert day is not None
    tr.raise_limits(day, Limits(cost_usd=1.0))
    assert check("plain")["budget"]["tokens"] == docs["plain"]["budget"]["tokens"] + 1000
    assert check("same")["budget"] == docs["same"]["budget"]  # its type's, unchanged
    assert check("daily")["day_budget"]["budget"]["cost_usd"] == 3.0


def test_r7_2_an_events_wall_time_and_day_are_one_reading_without_a_time_zone_lookup() -> None:
    """R7.2 (#22): an event's history record notes ``now().timestamp()`` and the local date
    of that same reading; the system clock gives both without a time-zone lookup."""
    wall = SystemWallClock()
    before = datetime.now().astimezone()
    at, day = wall.stamp()
    after = datetime.now().astimezone()
    assert before.timestamp() <= at <= after.timestamp()
    assert day == datetime.fromtimestamp(at).date() and day in (before.date(), after.date())
