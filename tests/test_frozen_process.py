"""R1.5: a process frozen mid-call (SIGSTOP, a paused VM, a long GC) is charged once.

While it is frozen its beat stops; once the beat is ``BEAT_STALE_S`` old, another
tracker on the store takes the process for dead and charges its open call at the
estimate (``<id>:estimate``).  When the frozen process wakes and its call settles, the
call must count once, by its actual usage: in the store's totals and events, in the
``estimated_charge`` records ``status`` shows, and in the woken process's own view.
The observers' clocks are injected (no wall-clock wait).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agents.fake_api import open_fake_api
from agents.fake_api._model import Fault
from scheduler import VibeConfig
from scheduler.budget import TaskProfile, Tracker
from scheduler.budget._open_calls import BEAT, BEAT_STALE_S, ESTIMATED, OPEN
from scheduler.budget._reservations import Reservation
from scheduler.config import Limits
from scheduler.core import FixedWallClock, Usage
from scheduler.runtime._recovery import RECOVER_EVERY_S
from scheduler.store import MemoryStore, SqliteStore, Store
from scheduler.store._redis import RedisStore
from scheduler.store._spool import SpooledEvent, SpooledState
from scheduler.testing import FRIDAY, run_real, run_virtual
from tests._anthropic_helpers import SECRET_KEY
from tests._redis_helpers import REDIS_URL

BIN = Path(sys.executable).parent / "vibe-engine"
ENV = {**{k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"},
       "COLUMNS": "200", "VIBE_FROZEN_TEST_KEY": SECRET_KEY}

DAY = f"day:{FRIDAY.isoformat()}"
ACTUAL = Usage(700, 150, 300)  # what the provider reported once the process woke
ESTIMATE = 1_000 + 234


class _Clock:
    """An observer's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tracker(store: Store, session: str, clock: _Clock) -> Tracker:
    return Tracker(store, VibeConfig(), session_id=session, wall=FixedWallClock(FRIDAY),
                   clock=clock)


async def _open_frozen_call(stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch,
                            clock: _Clock) -> tuple[Tracker, Tracker, Reservation]:
    """Two trackers on ``stores``: ``frozen`` (its records name another host: only its
    beat tells it is alive) with a call open, and ``live``."""
    for s in stores:
        await s.open()
    with monkeypatch.context() as m:
        m.setattr(socket, "gethostname", lambda: "frozen-host")
        frozen = _tracker(stores[0], "frozen", clock)
    live = _tracker(stores[1], "live", clock)
    await frozen.open()
    await live.open()
    await frozen.start_task("t", TaskProfile("code_modification", "moderate", Limits(), False,
                                             False), agent="a")
    res = await frozen.reserve_shared("t", model="sonnet", tokens=ESTIMATE, cost_usd=0.01)
    await frozen.open_call(res, prompt_tokens=1000, output_tokens=234)
    return frozen, live, res


async def _open_and_charge(stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch,
                           clock: _Clock) -> tuple[Tracker, Tracker, Reservation, list[int]]:
    """``frozen`` (its records name another host: only its beat tells it is alive) opens
    a call and freezes; ``live``, its clock moved round after round, charges it at its
    estimate."""
    frozen, live, res = await _open_frozen_call(stores, monkeypatch, clock)
    rounds = []
    while clock.now <= BEAT_STALE_S + RECOVER_EVERY_S:  # frozen: no beat of its own
        clock.now += RECOVER_EVERY_S
        rounds.append(len(await live.recover_open_calls()))
    return frozen, live, res, rounds


async def _frozen_then_settled(stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
                               ) -> dict[str, object]:
    """The call is charged at its estimate while ``frozen`` is frozen; ``frozen`` wakes and
    its call settles."""
    clock = _Clock()
    frozen, live, res, rounds = await _open_and_charge(stores, monkeypatch, clock)
    estimated = (await stores[1].totals(DAY)).tokens, live.day_scope().totals.tokens
    # a moment awake before the call's answer is read: another call's hold brings the
    # shared totals (on Redis) -- the estimate among them -- into its own view
    other = await frozen.reserve_shared("t", model="sonnet", tokens=10, cost_usd=0.0)
    await frozen.release(other)
    # the process wakes; its call completes and settles with the provider's usage
    event = frozen.make_event("t", model="sonnet", usage=ACTUAL, cost_usd=0.004,
                              event_id=res.event_id)
    await frozen.charge(event, res)
    clock.now += RECOVER_EVERY_S
    await frozen.recover_open_calls()  # its beat again
    again = len(await live.recover_open_calls())
    store = stores[1]
    out: dict[str, object] = {
        "rounds": rounds, "estimated": estimated, "again": again,
        "events": [(e.event_id, e.usage.total_tokens) for e in await store.events()],
        "store": {name: (t.tokens, t.calls, round(t.cost_usd, 9))
                  for name in (DAY, "session:frozen", "task:t")
                  for t in [await store.totals(name)]},
        "marked": sorted(await store.list_state(ESTIMATED)),
        "open": sorted(await store.list_state(OPEN)),
        "frozen_view": (frozen.task_scope("t").totals.tokens, frozen.session.totals.tokens,
                        frozen.day_scope().totals.tokens),
        "live_view": live.day_scope().totals.tokens,
    }
    for s in stores:
        await s.aclose()
    return out


def _check(out: dict[str, object], event_id_prefix: str = "frozen:", *,
           live_sees_all: bool = False) -> None:
    rounds = out["rounds"]
    assert isinstance(rounds, list) and sum(rounds) == 1  # charged at its estimate once
    assert out["estimated"] == (ESTIMATE, ESTIMATE)  # the store's day, the live one's
    events = out["events"]
    assert isinstance(events, list) and len(events) == 1
    assert events[0][0].startswith(event_id_prefix) and events[0][1] == ACTUAL.total_tokens
    assert not events[0][0].endswith(":estimate")
    total = ACTUAL.total_tokens
    assert out["store"] == {DAY: (total, 1, 0.004), "session:frozen": (total, 1, 0.004),
                            "task:t": (total, 1, 0.004)}
    assert out["marked"] == [] and out["open"] == []
    assert out["again"] == 0
    assert out["frozen_view"] == (total, total, total)
    # the live tracker's own day counted the estimate it charged, and no longer does (a
    # live process's use is in the store's day, not in another process's view of it) --
    # but on a store that versions its totals (Redis), where every view takes over the
    # store's day: the estimate's removal and the actual usage with it
    assert out["live_view"] == (total if live_sees_all else 0)


def test_r1_5_a_frozen_process_call_counts_once_by_its_actual_usage_on_sqlite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R1.5, SQLite: two processes' connections on one file; the frozen one's settle
    replaces the estimate the other charged -- totals, events, marks all say the actual."""
    db = tmp_path / "vibe.db"
    out = run_virtual(_frozen_then_settled, (SqliteStore(db), SqliteStore(db)), monkeypatch)
    _check(out)


def test_r1_5_a_frozen_process_call_counts_once_by_its_actual_usage_on_redis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_ns: str) -> None:
    """R1.5, Redis: the same across two connections to one namespace."""
    stores = tuple(RedisStore(REDIS_URL, namespace=redis_ns, spool_path=tmp_path / f"s{i}")
                   for i in range(2))
    out = run_real(_frozen_then_settled, stores, monkeypatch)
    _check(out, live_sees_all=True)


def test_r1_5_a_frozen_tracker_call_counts_once_on_the_memory_store(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """R1.5, the memory store (two trackers of one process): the same answer."""
    store = MemoryStore()
    out = run_virtual(_frozen_then_settled, (store, store), monkeypatch)
    _check(out)


# -- the runtime path: ``vibe-engine run`` frozen with calls in flight ------------------


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def _writable(db: Path) -> bool:
    """Whether another process can write ``db`` now (no one holds its write lock)."""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def _freeze_with_calls_in_flight(proc: subprocess.Popen[str], db: Path) -> None:
    """SIGSTOP ``proc`` once a call of it has been answered and another is in flight --
    not in the middle of a commit or a checkpoint: a process frozen holding the file's
    write lock keeps every other process from writing (then nothing can be charged
    until it wakes, the case of a store out of reach)."""
    for _ in range(3000):  # a bound on a hung run (the wait below is the pause)
        if _rows(db, "SELECT 1 FROM events WHERE model != ''") and _rows(
                db, "SELECT 1 FROM open_calls"):
            os.kill(proc.pid, signal.SIGSTOP)
            if _writable(db):
                return
            os.kill(proc.pid, signal.SIGCONT)  # stopped holding the lock: another moment
        try:
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            continue
        break
    raise AssertionError(f"no call in flight to freeze the run in ({proc.poll()})")


async def _charge_as_a_replica(db: Path) -> int:
    """Another process on the store: the frozen run's beat never moves, so once this
    tracker's clock passed ``BEAT_STALE_S`` it charges the run's calls at their estimate."""
    clock = _Clock()
    store = SqliteStore(db)
    await store.open()
    tracker = _tracker(store, "replica", clock)
    charged = len(await tracker.open())
    while clock.now <= BEAT_STALE_S + RECOVER_EVERY_S:
        clock.now += RECOVER_EVERY_S
        charged += len(await tracker.recover_open_calls())
    await tracker.close()
    await store.aclose()
    return charged


@pytest.mark.slow
def test_r1_5_a_frozen_vibe_engine_run_counts_each_call_once_by_what_the_api_reported(
        tmp_path: Path) -> None:
    """R1.5 as a user meets it: ``vibe-engine run`` is SIGSTOPped with calls in flight
    (a paused VM); a replica on the store takes it for dead and charges those calls at
    their estimate; SIGCONT: the run completes.  The store's events and totals, each
    task's ``usage.json`` and ``vibe-engine report`` then count every call once, by the
    usage the API reported -- no estimate left beside its actual usage."""
    state = tmp_path / "st"
    db = state / "vibe.db"
    tasks = "".join(f'[[tasks]]\nid = "t{i}"\nagent = "steps"\nprompt = "step {i}"\n'
                    'params = { steps = 3, max_tokens = 300 }\n' for i in range(3))
    with open_fake_api(api_key=SECRET_KEY) as api:
        api.inject(Fault("slow", delay_s=0.3), times=100)  # calls stay in flight a while
        cfg = tmp_path / "vibe.toml"
        cfg.write_text(f'state_dir = "{state}"\nstore = "sqlite"\n[provider]\n'
                       f'kind = "anthropic"\nbase_url = "{api.base_url}"\n'
                       f'api_key_env = "VIBE_FROZEN_TEST_KEY"\n{tasks}')
        proc = subprocess.Popen([BIN, "run", str(cfg), "--no-live", "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=ENV)
        try:
            _freeze_with_calls_in_flight(proc, db)
            charged = run_real(_charge_as_a_replica, db)
            os.kill(proc.pid, signal.SIGCONT)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.communicate()
            if proc.stderr is not None:  # a run that died early: its pipe is not left open
                proc.stderr.close()
        reported = sum(r.total_tokens for r in api.reported)
        answered = len(api.reported)
    assert proc.returncode == 0, err
    assert charged >= 1
    tokens = ("prompt_tokens + completion_tokens + cache_read_tokens + cache_write_5m_tokens"
              " + cache_write_1h_tokens")
    calls = _rows(db, f"SELECT event_id, task_id, {tokens} FROM events WHERE model != ''")
    assert not [c for c in calls if str(c[0]).endswith(":estimate")]
    assert len(calls) == answered and sum(int(str(c[2])) for c in calls) == reported
    assert _rows(db, "SELECT count(*) FROM state WHERE kind = 'estimated_charge'") == [(0,)]
    day = _rows(db, "SELECT prompt_tokens + completion_tokens + cache_read_tokens"
                    " + cache_write_tokens, calls FROM totals WHERE scope LIKE 'day:%'")
    assert day == [(reported, answered)]
    for i in range(3):
        usage = json.loads((state / "tasks" / f"t{i}" / "usage.json").read_text())["usage"]
        assert usage["tokens"] == sum(int(str(c[2])) for c in calls if c[1] == f"t{i}")
    report = subprocess.run([BIN, "report", "--state-dir", str(state), "--json"],
                            capture_output=True, text=True, timeout=120, env=ENV)
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert (doc["total"]["tokens"], doc["total"]["calls"]) == (reported, answered)
    # said, once per call, in the report's alert history
    alerts = [a["name"] for a in doc["alerts"]]
    assert alerts.count("open_call_estimate_replaced") == charged


# -- the settle replayed late; the store locked ---------------------------------------


async def _settle_spooled_after_the_estimate(tmp_path: Path, ns: str,
                                             monkeypatch: pytest.MonkeyPatch
                                             ) -> dict[str, object]:
    """The frozen process woke with Redis out of its reach: its settle went to its spool
    (the event, then its open call's delete), and it was killed.  Another replica had
    charged the call at its estimate; the spool is replayed at the next start."""
    spool = tmp_path / "frozen-spool"
    stores = (RedisStore(REDIS_URL, namespace=ns, spool_path=spool),
              RedisStore(REDIS_URL, namespace=ns, spool_path=tmp_path / "live-spool"))
    frozen, _, res, rounds = await _open_and_charge(stores, monkeypatch, _Clock())
    event = frozen.make_event("t", model="sonnet", usage=ACTUAL, cost_usd=0.004,
                              event_id=res.event_id)
    stores[0].spool.append(SpooledEvent(event))  # what ``settle`` spools while Redis is down
    stores[0].spool.append(SpooledState(OPEN, res.event_id, None))
    await stores[0].aclose()
    restarted = RedisStore(REDIS_URL, namespace=ns, spool_path=spool)
    await restarted.open()  # replays the spool
    store = stores[1]
    out: dict[str, object] = {
        "rounds": rounds, "replayed": len(restarted.spool),
        "events": [(e.event_id, e.usage.total_tokens) for e in await store.events()],
        "day": (await store.totals(DAY)).tokens,
        "marked": sorted(await store.list_state(ESTIMATED)),
        "open": sorted(await store.list_state(OPEN)),
    }
    await restarted.aclose()
    await store.aclose()
    return out


def test_r1_5_a_frozen_process_settle_replayed_from_its_spool_replaces_the_estimate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_ns: str) -> None:
    """R1.5, Redis: a settle that waited in the spool is replayed as one step with its
    open call's delete, so it too replaces the estimate charged meanwhile."""
    out = run_real(_settle_spooled_after_the_estimate, tmp_path, redis_ns, monkeypatch)
    rounds = out["rounds"]
    assert isinstance(rounds, list) and sum(rounds) == 1 and out["replayed"] == 0
    events = out["events"]
    assert isinstance(events, list) and len(events) == 1
    assert events[0][1] == ACTUAL.total_tokens and not events[0][0].endswith(":estimate")
    assert out["day"] == ACTUAL.total_tokens
    assert out["marked"] == [] and out["open"] == []


async def _recover_while_locked(db: Path, monkeypatch: pytest.MonkeyPatch
                                ) -> tuple[list[int], list[str], int]:
    """A round finds the store locked by another process past its ``retry_s``: the call is
    left for the next round, its process's beat kept (else, on another host, nothing
    would tell that process is dead any more)."""
    clock = _Clock()
    stores = (SqliteStore(db, retry_s=0.05), SqliteStore(db, retry_s=0.05))
    _, live, _ = await _open_frozen_call(stores, monkeypatch, clock)
    rounds = []
    other = sqlite3.connect(db, isolation_level=None)
    while clock.now < BEAT_STALE_S:  # the last of these rounds finds the beat stale
        clock.now += RECOVER_EVERY_S
        if clock.now >= BEAT_STALE_S:
            other.execute("BEGIN IMMEDIATE")  # another process writes, for long
        rounds.append(len(await live.recover_open_calls()))
    beats = sorted(await stores[1].list_state(BEAT))
    other.execute("COMMIT")
    other.close()
    clock.now += RECOVER_EVERY_S
    rounds.append(len(await live.recover_open_calls()))
    day = (await stores[1].totals(DAY)).tokens
    for s in stores:
        await s.aclose()
    return rounds, beats, day


def test_r1_5_a_round_that_finds_the_store_locked_charges_the_call_in_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R1.5: charging an open call is never spooled (it must see the store as it is);
    a locked store fails the round for that call only, not the start or the run."""
    rounds, beats, day = run_virtual(_recover_while_locked, tmp_path / "vibe.db", monkeypatch)
    assert rounds[-2:] == [0, 1] and sum(rounds) == 1, rounds
    assert any(b.startswith("frozen-host:") for b in beats)  # kept while not charged
    assert day == ESTIMATE
