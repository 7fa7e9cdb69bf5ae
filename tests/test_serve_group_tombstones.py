"""#21: a grouped task (``x-vibe-task``) that ran and ended on its budget stays refused
-- starting it again would renew a spent budget -- while a long-running serve holds at
most ``serve.max_tasks_per_key`` of those ended tasks per key in memory: each is a
record of the store (``serve_ended``), read back when a call names one the process no
longer holds, after a restart and on another replica (R1.1, R1.2).

Virtual time (trio's ``MockClock``), the handlers' own calls through the gateway, the
embedded SQLite store of the state directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler.config import config_from_dict
from scheduler.core import Usage
from scheduler.serve import Served
from scheduler.serve._runtime import GroupEndedError, GroupUnavailableError
from scheduler.serve._tombstones import ENDED_KIND
from scheduler.store import MemoryStore
from scheduler.testing import InstantProvider
from tests._serve_helpers import grouped_call

CAP = 3


def _data(tmp_path: Path, session: str, time_s: float) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"), "session_id": session,
        "serve": {"upstream_base_url": "http://127.0.0.1:9", "upstream_key_env": "UP",
                  "max_tasks_per_key": CAP,
                  "keys": [{"name": "alpha", "key_env": "KEY_A",
                            "task_budget": {"time_s": time_s}}]},
    }


@asynccontextmanager
async def _served(tmp_path: Path, session: str = "serve-1",
                  time_s: float = 30) -> AsyncIterator[Served]:
    # answers 150 tokens at once in the place of the upstream client (the gateway's calls
    # need only ``complete``)
    provider: Any = InstantProvider(Usage(100, 50))
    served = Served(config_from_dict(_data(tmp_path, session, time_s)), env={"KEY_A": "sk-a"},
                    provider=provider)
    async with served.running():
        yield served


async def _end_on_their_time_budget(served: Served, names: list[str]) -> None:
    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(grouped_call, served, None, name)
    await anyio.sleep(31)  # each one's task_budget.time_s (30 s) runs out


async def test_r1_2_a_long_serve_holds_at_most_the_cap_of_ended_tasks_per_key(
    tmp_path: Path,
) -> None:
    """20 grouped tasks of one key end on their wall-time budget: serve held all 20
    ended ids (and why) until it stopped; it holds the latest 3 (``max_tasks_per_key``),
    and every one of the 20 is still refused -- the 17 others read from the store --
    while new names start as before."""
    names = [f"job-{i:02d}" for i in range(20)]
    async with _served(tmp_path) as served:
        for i in range(0, len(names), CAP):  # at most CAP running at once
            await _end_on_their_time_budget(served, names[i:i + CAP])
        assert not served.orchestrator.handles.get("alpha/job-00")  # forgotten
        assert len(served.ended) == CAP
        for name in names:
            with pytest.raises(GroupEndedError, match=f"alpha/{name} has ended"):
                await grouped_call(served, None, name)
        assert len(served.ended) == CAP
        stored = await served.orchestrator.store.list_state(ENDED_KIND)
        assert sorted(stored) == [f"alpha/{n}" for n in names]
        for name in ("fresh-1", "fresh-2", "fresh-3"):  # under the cap of running tasks
            assert not (await grouped_call(served, None, name)).finished


async def test_r1_1_a_task_that_ended_on_its_budget_stays_refused_after_a_restart(
    tmp_path: Path,
) -> None:
    """``alpha/job`` ran out of its 30 s; serve stops and starts again on the same store
    (a new session, as a restart with another session id, or a replica beside it).
    Before, the new process started ``alpha/job`` again with a fresh 30 s: its calls
    ran.  Now they are refused, two arriving at once both (neither is taken for the
    server stopping), and another name runs.  Once the key's ``task_budget`` is raised
    (as the refusal suggests), the task runs again under it."""
    async with _served(tmp_path, "serve-1") as first:
        await _end_on_their_time_budget(first, ["job"])
    async with _served(tmp_path, "serve-2") as second:
        refused: list[BaseException] = []

        async def call() -> None:
            try:
                await grouped_call(second, None, "job")
            except GroupEndedError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            tg.start_soon(call)
        assert len(refused) == 2
        assert "alpha/job" not in second.orchestrator.handles
        assert not (await grouped_call(second, None, "other")).finished
    async with _served(tmp_path, "serve-3", time_s=60) as third:
        assert not (await grouped_call(third, None, "job")).finished


class _SlowReads(MemoryStore):
    """A store whose reads of ended tasks wait for ``gate`` (a slow or distant store)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.asked = anyio.Event()

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None:
        if kind == ENDED_KIND:
            self.asked.set()
            await self.gate.wait()
        return await super().get_state(kind, key)


async def test_r1_2_a_first_call_cancelled_while_the_store_is_asked_leaves_no_dead_task(
    tmp_path: Path,
) -> None:
    """The first call naming ``job`` is cancelled (its client went away) while the store
    is asked whether ``job`` ended earlier; a second call waiting for that start learns
    it could not start (503, not "serve is stopping"), and the next call starts it."""
    store = _SlowReads()
    provider: Any = InstantProvider(Usage(100, 50))
    served = Served(config_from_dict(_data(tmp_path, "serve-1", 30)), env={"KEY_A": "sk-a"},
                    provider=provider, store=store)
    async with served.running():
        (entry,) = served.keys.entries()
        waited: list[BaseException] = []

        async def second() -> None:
            try:
                await served.group(entry, "job")
            except GroupUnavailableError as exc:
                waited.append(exc)

        first = anyio.CancelScope()

        async def call_first() -> None:
            with first:
                await served.group(entry, "job")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_first)
            await store.asked.wait()
            tg.start_soon(second)
            await anyio.sleep(1)
            first.cancel()
        assert [str(e) for e in waited] == [
            "task alpha/job could not start: the call starting it ended; the next call "
            "grouped under it starts it again"]
        store.gate.set()
        assert not (await grouped_call(served, None, "job")).finished
