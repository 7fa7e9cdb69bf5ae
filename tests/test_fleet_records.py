"""Budget people added for every process on the store (``fleet_budget`` records, R3.4
across ``serve`` replicas) and the ``day_begun`` records (the day no process goes back
before, R1.2).

A ``serve`` replica started after an add to its key's budget or to the day's shows the
raised limits from its start (``status``), not only after its first refusal; records
that can no longer matter -- adds to days gone, ``day_begun`` records but the latest
few -- are deleted when a process starts, on SQLite and on Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler import TaskSpec
from scheduler.config import VibeConfig
from scheduler.control._fleet import KEEP_DAYS_BEGUN, KIND, NOTIFIED
from scheduler.store import open_store
from scheduler.store._base import DAY_BEGUN
from scheduler.testing import FRIDAY, build_orchestrator, run_virtual
from tests._anthropic_helpers import SECRET_KEY, fake_api
from tests._redis_helpers import REDIS_URL
from tests._serve_helpers import BIN, CLIENT_KEYS, serve_process

__all__ = ["fake_api"]  # the fixture, imported for pytest

ENV = {"UPSTREAM_KEY": SECRET_KEY, **CLIENT_KEYS}
BUDGET, DAY_BUDGET, ADDED, DAY_ADDED = 600, 100_000, 5_000, 7_000


def _config(tmp_path: Path, upstream: str, store: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f"""
state_dir = "{tmp_path / 'c'}"
store = "{store}"

[budgets.day]
tokens = {DAY_BUDGET}

[serve]
upstream_base_url = "{upstream}"
upstream_key_env = "UPSTREAM_KEY"

[[serve.keys]]
name = "alpha"
key_env = "VIBE_KEY_A"
budget = {{ tokens = {BUDGET} }}
""")
    return path


def _add(scope: str, tokens: int) -> dict[str, object]:
    """A record as ``decide alpha add`` on another replica stores it (``FleetBudget``)."""
    return {"scope": scope, "limits": {"tokens": tokens}, "task_id": "alpha",
            "source": "cli", "at": 1.0}


async def _seed(store: str, tmp_path: Path, today: date) -> None:
    """What earlier replicas left: an add to the key and one to today, adds to days gone
    (yesterday's kept: a replica whose clock is behind may still be on it), and a
    ``day_begun`` record for each of the last 12 days."""
    backend = open_store(store, tmp_path)
    await backend.open()
    try:
        day = today.isoformat()
        await backend.put_state(KIND, "task:alpha#a1", _add("task:alpha", ADDED))
        await backend.put_state(KIND, f"day:{day}#d1", _add(f"day:{day}", DAY_ADDED))
        for back in (1, 2, 30):
            old = (today - timedelta(days=back)).isoformat()
            await backend.put_state(KIND, f"day:{old}#o{back}", _add(f"day:{old}", 1))
            await backend.put_state(KIND, f"task-day:alpha:{old}#t{back}",
                                    _add(f"task-day:alpha:{old}", 1))
        for back in range(1, 13):
            await backend.put_state(DAY_BEGUN, (today - timedelta(days=back)).isoformat(),
                                    {"session": "earlier"})
    finally:
        await backend.aclose()


async def _records(store: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    backend = open_store(store, tmp_path)
    await backend.open()
    try:
        return (sorted(await backend.list_state(KIND)),
                sorted(await backend.list_state(DAY_BEGUN)))
    finally:
        await backend.aclose()


async def _status(config: Path) -> dict[str, object]:
    done = await anyio.run_process([str(BIN), "status", "--json", "-c", str(config)],
                                   check=False)
    assert done.returncode == 0, done.stderr.decode()
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def _limit(rows: object, match: Callable[[dict[str, object]], bool]) -> object:
    assert isinstance(rows, list)
    return next((r["limit"] for r in rows if match(r) and r["dimension"] == "tokens"), None)


async def _replica_started_after_the_adds(tmp_path: Path, upstream: str,
                                          store: str) -> dict[str, object]:
    today = date.today()
    await _seed(store, tmp_path, today)
    config = _config(tmp_path, upstream, store)
    seen: dict[str, object] = {}
    with serve_process(config, tmp_path, ENV) as url:
        async with anthropic.AsyncAnthropic(base_url=url, api_key=CLIENT_KEYS["VIBE_KEY_A"],
                                            max_retries=0, timeout=60) as client:
            await client.messages.create(  # well under the key's limit: never refused
                model="claude-haiku-4-5", max_tokens=64,
                messages=[{"role": "user", "content": "Name one prime."}])
        with anyio.fail_after(20):  # status.json is rewritten within a second
            while True:
                doc = await _status(config)
                seen["day"] = _limit(doc["budgets"],
                                     lambda r: r["scope"] == f"day:{today.isoformat()}")
                seen["key"] = _limit(doc["task_budgets"], lambda r: r["task_id"] == "alpha")
                if seen["key"] is not None:
                    break
                await anyio.sleep(0.2)
    seen["records"] = await _records(store, tmp_path)
    return seen


def _check(seen: dict[str, object], today: date) -> None:
    assert (seen["key"], seen["day"]) == (BUDGET + ADDED, DAY_BUDGET + DAY_ADDED), seen
    records = seen["records"]
    assert isinstance(records, tuple)
    fleet, begun = records
    yesterday = (today - timedelta(days=1)).isoformat()
    assert fleet == sorted(["task:alpha#a1", f"day:{today.isoformat()}#d1",
                            f"day:{yesterday}#o1", f"task-day:alpha:{yesterday}#t1"]), seen
    latest = [(today - timedelta(days=back)).isoformat() for back in range(KEEP_DAYS_BEGUN)]
    assert begun == sorted(latest), seen  # today's (this replica's) and the 6 before


@pytest.mark.slow
@pytest.mark.real_asyncio  # a serve process, the store and the fake API over sockets
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_r3_4_a_replica_starts_from_the_fleet_adds_and_prunes_records_gone_stale(
    fake_api: FakeAnthropicServer, tmp_path: Path, backend: str, request: pytest.FixtureRequest,
) -> None:
    """R3.4, R1.2: a ``serve`` replica started after budget was added on another replica
    -- 5,000 tokens to its key, 7,000 to the day -- shows 5,600 and 107,000 in ``status``
    after a call that was never refused (before: 600 and 100,000 until its first refusal);
    and at its start the adds to days before yesterday and all but the latest 7
    ``day_begun`` records are deleted from the shared store (before: kept for ever)."""
    if backend == "sqlite":
        store = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        store = f"{REDIS_URL}?namespace={request.getfixturevalue('redis_ns')}"
    _check(await _replica_started_after_the_adds(tmp_path, fake_api.base_url, store),
           date.today())


def test_r3_3_past_days_alert_claims_are_pruned_at_a_process_start(tmp_path: Path) -> None:
    """R3.3, R1.2: each crossing of a budget every process counts leaves a claim (kind
    ``alert_notified``) so people are told once; a past day's is never told again.  An
    orchestrator's start deletes those of days before yesterday (before: kept for ever,
    a few records per key and day); today's, yesterday's and a task's own stay."""
    db = tmp_path / "shared.db"
    keys = [f"{scope}#cost_usd#critical#5" for scope in (
        f"day:{FRIDAY - timedelta(days=30)}", f"day:{FRIDAY - timedelta(days=2)}",
        f"task-day:alpha:{FRIDAY - timedelta(days=2)}", f"day:{FRIDAY - timedelta(days=1)}",
        f"day:{FRIDAY}", "task:alpha")]

    async def main() -> list[str]:
        store = open_store(f"sqlite://{db}", tmp_path)
        await store.open()
        for key in keys:
            await store.put_state(NOTIFIED, key, {"task_id": "t", "used": 1.0})
        await store.aclose()

        class Idle:
            async def run(self, ctx: object) -> None:
                return None

        orch = build_orchestrator({"idle": Idle}, config=VibeConfig(
            state_dir=tmp_path / "o", store=f"sqlite://{db}"))
        await orch.run([TaskSpec(id="t", agent="idle", prompt="x")])
        store = open_store(f"sqlite://{db}", tmp_path)
        await store.open()
        try:
            return sorted(await store.list_state(NOTIFIED))
        finally:
            await store.aclose()

    assert run_virtual(main) == sorted(keys[3:])
