"""The governed path from the route to the provider call: estimate, admit, open the call
(R1.2, R1.5, R2.2).

Each test names what a shortcut of that path must keep noticing: a call cancelled while
its open-call record is committed, a different config's prices, a record of another shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from scheduler import VibeConfig
from scheduler.core import Usage, cost_usd
from scheduler.store import SqliteStore
from scheduler.testing import build_orchestrator, run_real
from tests._helpers import tracker_with_task


def test_r1_5_an_open_call_cancelled_while_its_record_commits_leaves_no_record(
    tmp_path: Path,
) -> None:
    """R1.5: a call cancelled while its batch of writes is being committed has its
    ``open_call`` record written all the same (a commit is never cancelled half-way);
    releasing its reservation must delete it, or the next start would charge at its
    estimate a call that never went out."""

    async def main() -> tuple[dict[str, Any], str, str]:
        store = SqliteStore(tmp_path / "usage.db")
        await store.open()
        try:
            tracker = await tracker_with_task(store)
            first = tracker.reserve("t1", model="sonnet", tokens=100, cost_usd=0.001)
            second = tracker.reserve("t1", model="sonnet", tokens=100, cost_usd=0.001)
            follower = anyio.CancelScope()
            commit = store.group._commit

            async def cancelling(writes: list[Any]) -> list[Any]:
                follower.cancel()  # the second write waits in this very batch
                return await commit(writes)

            store.group._commit = cancelling

            async def call_in_flight() -> None:
                await tracker.open_call(first, prompt_tokens=60, output_tokens=40)

            async def cancelled_call() -> None:
                with follower:
                    await tracker.open_call(second, prompt_tokens=60, output_tokens=40)
                await tracker.release(second)  # what the gateway's ``finally`` does

            async with anyio.create_task_group() as tg:
                # the first write leads the batch and gathers the second in it
                tg.start_soon(call_in_flight)
                tg.start_soon(cancelled_call)
            store.group._commit = commit
            assert follower.cancelled_caught
            return await store.list_state("open_call"), first.event_id, second.event_id
        finally:
            await store.aclose()

    records, first_id, second_id = run_real(main)
    assert second_id not in records
    assert list(records) == [first_id]  # the call still in flight keeps its record
    record = records[first_id]
    assert (record["task_id"], record["prompt_tokens"], record["output_tokens"],
            record["cost_usd"]) == ("t1", 60, 40, 0.001)


def test_r2_2_a_calls_estimated_cost_is_its_prices_and_follows_a_new_config(
    tmp_path: Path,
) -> None:
    """R2.2: the cost a call reserves is ``cost_usd`` of its estimate at the model's
    prices, the same float; the prices read once are read again for another config."""
    orch = build_orchestrator({}, state_dir=tmp_path)
    gateway = orch.gateway
    config = gateway.config
    spec = config.model_spec("sonnet")
    assert gateway.estimated_cost("sonnet", 1234, 567) == cost_usd(Usage(1234, 567), spec)
    dearer = spec.model_copy(update={"input_usd_per_mtok": spec.input_usd_per_mtok * 2})
    gateway.config = config.model_copy(update={"models": {**config.models, "sonnet": dearer}})
    assert gateway.estimated_cost("sonnet", 1234, 567) == cost_usd(Usage(1234, 567), dearer)
    gateway.config = config
    assert gateway.estimated_cost("sonnet", 1234, 567) == cost_usd(Usage(1234, 567), spec)


def test_r1_5_an_open_call_record_of_another_shape_reads_back_as_written(
    tmp_path: Path,
) -> None:
    """R1.5: an ``open_call`` record whose keys are in the columns' order but whose values
    are not of their types is kept as JSON (not as a row that would change them); the
    tracker's own record is a row and reads back field for field."""

    async def main() -> tuple[dict[str, Any], dict[str, Any], str]:
        store = SqliteStore(tmp_path / "usage.db")
        await store.open()
        try:
            tracker = await tracker_with_task(store, VibeConfig())
            res = tracker.reserve("t1", model="haiku", tokens=300, cost_usd=0.25)
            await tracker.open_call(res, prompt_tokens=200, output_tokens=100)
            record = await store.get_state("open_call", res.event_id)
            assert record is not None
            odd = {**record, "prompt_tokens": "200", "event_id": "odd"}
            await store.put_state("open_call", "odd", odd)
            back = await store.get_state("open_call", "odd")
            assert back is not None
            return record, back, res.event_id
        finally:
            await store.aclose()

    record, back, event_id = run_real(main)
    assert back["prompt_tokens"] == "200"  # as written: not made an int by a column
    assert record["event_id"] == event_id
    assert (record["task_id"], record["model"], record["prompt_tokens"],
            record["output_tokens"], record["cost_usd"]) == ("t1", "haiku", 200, 100, 0.25)
