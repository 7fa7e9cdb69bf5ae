"""The store contract: every backend behaves the same (R1.2, R1.5, R2.1, R2.6)."""

from __future__ import annotations

import pytest

from scheduler import Usage
from scheduler.store import Store, scopes_of
from tests._helpers import event

pytestmark = pytest.mark.anyio


async def test_r2_1_record_keeps_every_token_kind(store: Store) -> None:
    """R2.1: prompt, completion, cache-read and cache-creation tokens are all recorded."""
    e = event(1, prompt=120, completion=80, cache_read=1000, cache_write=300)
    assert await store.record(e)
    [back] = await store.events(task_id="t1")
    assert back == e
    t = await store.totals("task:t1")
    assert (t.prompt_tokens, t.completion_tokens, t.cache_read_tokens, t.cache_write_tokens) == (
        120, 80, 1000, 300,
    )
    assert t.tokens == 1500
    assert t.tokens_by_model == {"sonnet": 1500}
    assert t.calls == 1


async def test_r2_6_record_is_idempotent(store: Store) -> None:
    """R2.6: the same event recorded twice is charged once."""
    e = event(1)
    assert await store.record(e) is True
    assert await store.record(e) is False
    assert (await store.totals("day:2026-11-27")).tokens == 150
    assert len(await store.events()) == 1


async def test_r1_2_one_event_charged_to_every_nested_scope(store: Store) -> None:
    """R1.2: task ⊂ session ⊂ day all receive the event."""
    await store.record(event(1, task="a", session="s1"))
    await store.record(event(2, task="b", session="s1"))
    await store.record(event(3, task="c", session="s2"))
    assert scopes_of(event(1, task="a")) == ("task:a", "session:s1", "day:2026-11-27")
    assert (await store.totals("task:a")).tokens == 150
    assert (await store.totals("session:s1")).tokens == 300
    assert (await store.totals("session:s2")).tokens == 150
    assert (await store.totals("day:2026-11-27")).tokens == 450
    assert (await store.totals("day:2026-11-28")).tokens == 0


async def test_r1_2_a_grouped_task_is_charged_to_its_parent_task_too(store: Store) -> None:
    """R1.2 (#21): a task id ``PARENT/NAME`` (a serve key's grouped task) is nested in
    task ``PARENT``: task ⊂ parent ⊂ session ⊂ day all receive its events."""
    assert scopes_of(event(1, task="k/a")) == (
        "task:k/a", "task:k", "session:s1", "day:2026-11-27")
    await store.record(event(1, task="k/a", session="s1"))
    await store.record(event(2, task="k/b", session="s1"))
    await store.record(event(3, task="k", session="s1"))
    assert (await store.totals("task:k/a")).tokens == 150
    assert (await store.totals("task:k")).tokens == 450
    assert (await store.totals("task:k")).calls == 3
    assert (await store.totals("task:k")).tokens_by_model == {"sonnet": 450}
    assert (await store.totals("session:s1")).tokens == 450
    assert (await store.totals("day:2026-11-27")).tokens == 450


async def test_r1_1_operation_counts_and_cost_totals(store: Store) -> None:
    """R1.1: file edits, shell commands and dangerous commands are counted with cost."""
    await store.record(event(1, model="", prompt=0, completion=0, cost=0.0, file_edits=1))
    await store.record(
        event(2, model="", prompt=0, completion=0, cost=0.0, shell_commands=1,
              dangerous_commands=1)
    )
    await store.record(event(3, cost=0.25))
    t = await store.totals("task:t1")
    assert (t.file_edits, t.shell_commands, t.dangerous_commands) == (1, 1, 1)
    assert t.cost_usd == pytest.approx(0.25)
    assert t.calls == 1  # operations are not model calls


async def test_events_filter_by_task_and_day_range(store: Store) -> None:
    await store.record(event(1, day="2026-11-26"))
    await store.record(event(2, day="2026-11-27", task="t2"))
    await store.record(event(3, day="2026-11-28"))
    assert [e.event_id for e in await store.events(day_from="2026-11-27")] == ["e2", "e3"]
    assert [e.event_id for e in await store.events(day_to="2026-11-27")] == ["e1", "e2"]
    assert [e.event_id for e in await store.events(task_id="t2")] == ["e2"]


async def test_state_records_round_trip(store: Store) -> None:
    await store.put_state("task", "t1", {"status": "running", "n": [1, 2]})
    await store.put_state("task", "t2", {"status": "done"})
    assert await store.get_state("task", "t1") == {"status": "running", "n": [1, 2]}
    await store.put_state("task", "t1", {"status": "completed"})
    assert await store.list_state("task") == {
        "t1": {"status": "completed"}, "t2": {"status": "done"},
    }
    await store.delete_state("task", "t1")
    assert await store.get_state("task", "t1") is None
    assert await store.get_state("nothing", "x") is None


async def test_totals_are_copies(store: Store) -> None:
    await store.record(event(1))
    t = await store.totals("task:t1")
    t.prompt_tokens += 1000
    t.tokens_by_model["sonnet"] = 0
    again = await store.totals("task:t1")
    assert again.prompt_tokens == 100
    assert again.tokens_by_model == {"sonnet": 150}


async def test_cache_write_split_survives(store: Store) -> None:
    """R2.4: 5-minute and 1-hour cache writes are stored separately."""
    e = event(1).__class__(
        event_id="x", task_id="t1", session_id="s1", day="2026-11-27", at=1.0, model="opus",
        usage=Usage(1, 2, 3, 4, 5),
    )
    await store.record(e)
    [back] = await store.events()
    assert back.usage == Usage(1, 2, 3, 4, 5)
    assert (await store.totals("task:t1")).cache_write_tokens == 9


@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt", -5), ("completion", -1), ("cost", -0.01), ("cost", float("nan")),
     ("cost", float("inf")), ("cache_read", -3), ("file_edits", -1)],
)
async def test_r2_1_store_refuses_negative_or_non_finite_usage(
    store: Store, field: str, value: float
) -> None:
    """R2.1: usage that would credit the budget (negative) or poison every later total
    (NaN, infinity) is refused with an error naming the field; nothing is recorded."""
    from scheduler.core import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as err:
        await store.record(event(1, **{field: value}))  # type: ignore[arg-type]
    assert isinstance(err.value, ValueError)
    assert {"prompt": "prompt_tokens", "completion": "completion_tokens",
            "cache_read": "cache_read_tokens"}.get(field, field) in str(err.value)
    assert await store.events() == []
    assert (await store.totals("day:2026-11-27")).tokens == 0
