"""#21 a grouped task (``x-vibe-task``) with no call in flight for ``serve.group_idle_s``
ends and the run forgets it (R1.2, R2.6, R7.1).

A client that names a task per conversation would otherwise make a long-running
``vibe-engine serve`` hold every task it ever ran (~9 KiB each, and a status row and a
metrics series each).  An idle task's usage is written as any ended task's; the next
call under its name starts it again from its totals in the store, so its
``task_budget`` binds across the restart; one that ended because its budget ran out is
still refused once forgotten.  Virtual time (trio's ``MockClock``) for the memory and
race checks; the SDK over real HTTP for the client's view.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest
from prometheus_client import generate_latest

from agents.fake_api import FakeAnthropicServer
from scheduler.config import config_from_dict
from scheduler.core import BudgetExceededError, ConfigError, EventBus, Usage, loop_time
from scheduler.observe import snapshot_of
from scheduler.serve import Served
from scheduler.serve._runtime import GroupEndedError
from scheduler.tasks import TaskHandle
from scheduler.testing import InstantProvider
from tests._anthropic_helpers import fake_api
from tests._serve_helpers import CLIENT_KEYS, GROUPED_USER, grouped_call, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

IDLE_S = 60.0


def _provider() -> Any:
    """Answers 150 tokens at once; in the place of serve's upstream client (its calls go
    through the gateway, which needs only ``complete``)."""
    return InstantProvider(Usage(100, 50))


def _data(tmp_path: Path, idle_s: float | None = IDLE_S, **key: Any) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"), "session_id": "serve-idle",
        "serve": {"upstream_base_url": "http://127.0.0.1:9", "upstream_key_env": "UP",
                  "group_idle_s": idle_s,
                  "keys": [{"name": "alpha", "key_env": "KEY_A", **key}]},
    }


@asynccontextmanager
async def _served(tmp_path: Path, idle_s: float | None = IDLE_S,
                  **key: Any) -> AsyncIterator[Served]:
    """A serve run on virtual time without HTTP: the handlers' own calls (``group`` →
    the gateway → ``release``), a provider answering 150 tokens at once, and an event
    history too short to hold one event per task."""
    served = Served(config_from_dict(_data(tmp_path, idle_s, **key)), env={"KEY_A": "sk-a"},
                    provider=_provider(),
                    bus=EventBus(loop_time, history=16))
    async with served.running():
        yield served


async def _calls(served: Served, names: list[str]) -> None:
    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(grouped_call, served, None, name)


def _held(served: Served, task_id: str) -> list[str]:
    """Where the run still holds ``task_id`` (empty once forgotten)."""
    orch = served.orchestrator
    places = {
        "handles": task_id in orch.handles,
        "tracker": orch.tracker.has_task(task_id),
        "allocator": task_id in orch.allocator._holders,
        "serve": task_id in served._grouped,
        "status": any(t.task_id == task_id for t in snapshot_of(
            orch.view, now=anyio.current_time(), events=0).tasks),
    }
    return [name for name, held in places.items() if held]


def _growth(diffs: list[tracemalloc.StatisticDiff], n: int) -> int:
    """Bytes grown, leaving out a table of the interpreter's that resized in between: a
    few blocks of megabytes (a long-lived test process's table of interned strings, grown
    by every earlier test, resized by one ``sys.intern`` of pathlib's: +3.7 MB), the old
    table's release included.  What ``n`` idle tasks would leave behind is many blocks."""
    return sum(d.size_diff for d in diffs
               if not (abs(d.size_diff) > 256 * 1024 and abs(d.count_diff) < n // 20))


async def test_r1_2_idle_grouped_tasks_are_forgotten_and_leave_no_memory(
    tmp_path: Path
) -> None:
    """#21, R1.2/R7.1: 200 grouped tasks that each served a call and went idle are
    gone from the task table, the tracker, the allocator, status and serve's own map,
    and leave well under 1 KiB each behind (a running one holds ~9 KiB).  A first round
    of as many tasks at once grows the tables to their peak size before measuring."""
    n = 200
    async with _served(tmp_path) as served:
        tracemalloc.start(1)
        try:
            await _calls(served, [f"warm-{i}" for i in range(n)])
            await anyio.sleep(IDLE_S * 2)
            gc.collect()
            before = tracemalloc.take_snapshot()
            await _calls(served, [f"conv-{i}" for i in range(n)])
            assert len(served.orchestrator.handles) == n + 1  # the key's own task too
            await anyio.sleep(IDLE_S * 2)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        growth = _growth(after.compare_to(before, "lineno"), n)
        assert growth / n < 1024, f"{growth / n:.0f} bytes left per idle task"
        assert list(served.orchestrator.handles) == ["alpha"]
        assert served.orchestrator.tracker.tasks() == ["alpha"]
        assert not _held(served, "alpha/conv-7")
        assert served.orchestrator.forgotten == 2 * n
        assert served.orchestrator.tracker.task_scope("alpha").totals.calls == 2 * n


async def test_r2_6_an_idle_task_writes_its_usage_and_starts_again_from_its_totals(
    tmp_path: Path
) -> None:
    """#21, R1.2/R2.6: ``alpha/job`` spends, idles out (its usage.json written, the run
    forgets it), and the next call under ``job`` starts it again with its totals; its
    ``task_budget`` of 400 tokens binds across the restarts: the third call is refused."""
    async with _served(tmp_path, task_budget={"tokens": 400}) as served:
        tracker = served.orchestrator.tracker
        first = await grouped_call(served, None, "job")
        await anyio.sleep(IDLE_S + 1)
        assert not _held(served, "alpha/job")
        usage = json.loads((tmp_path / "state/tasks/alpha/job/usage.json").read_text())
        assert (usage["status"], usage["usage"]["tokens"]) == ("completed", 150)
        second = await grouped_call(served, None, "job")
        assert second is not first and not second.finished
        assert tracker.task_scope("alpha/job").totals.tokens == 300
        await anyio.sleep(IDLE_S + 1)
        assert not _held(served, "alpha/job")
        with pytest.raises(BudgetExceededError, match="alpha/job"):
            await grouped_call(served, None, "job")
        assert tracker.task_scope("alpha/job").totals.tokens == 300
        assert tracker.task_scope("alpha").totals.calls == 2


async def test_r1_2_a_task_stays_while_a_call_is_in_flight(tmp_path: Path) -> None:
    """#21: idle time counts from the end of the last call in flight: a call held for
    longer than ``group_idle_s`` keeps its task, which ends ``group_idle_s`` after it."""
    async with _served(tmp_path) as served:
        (entry,) = served.keys.entries()
        handle = await served.group(entry, "long")
        assert handle is not None
        await anyio.sleep(IDLE_S * 3)  # the call is still in flight (a long stream)
        assert _held(served, "alpha/long") and not handle.finished
        served.release(handle)
        await anyio.sleep(IDLE_S - 1)
        assert not handle.finished
        await anyio.sleep(2)
        assert handle.finished and not _held(served, "alpha/long")


@pytest.mark.parametrize("offset", [-0.001, 0.0, 0.001])
async def test_r1_2_a_call_arriving_as_its_task_idles_out_is_served_once(
    tmp_path: Path, offset: float
) -> None:
    """#21, R1.2: calls arriving just before, exactly when and just after their grouped
    tasks idle out are each served and charged once: by the task still running, or by
    the task started again once the idle one was forgotten (at the very deadline trio
    runs the agent or the call first, at random: eight tasks see both orders)."""
    names = [f"job-{i}" for i in range(8)]
    async with _served(tmp_path) as served:
        firsts = {}

        async def twice(name: str) -> None:
            firsts[name] = await grouped_call(served, None, name)
            await anyio.sleep_until(anyio.current_time() + IDLE_S + offset)
            again = await grouped_call(served, None, name)
            assert again is firsts[name] or again.calls == 1  # the old task, or a new one
            scope = served.orchestrator.tracker.task_scope(f"alpha/{name}")
            assert (scope.totals.calls, scope.totals.tokens) == (2, 300)

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(twice, name)
        await anyio.sleep(IDLE_S * 2)
        assert not any(_held(served, f"alpha/{name}") for name in names)
        assert served.orchestrator.tracker.task_scope("alpha").totals.calls == 16


async def test_r1_2_calls_waiting_for_an_idle_task_to_end_start_it_once(
    tmp_path: Path
) -> None:
    """#21: five calls arriving while ``alpha/job`` records its idle end wait for it to be
    forgotten, then share one new start of it."""
    async with _served(tmp_path) as served:
        first = await grouped_call(served, None, "job")
        await anyio.sleep(IDLE_S)  # the deadline: the agent ends, its end is recorded
        handles: list[TaskHandle] = []

        async def call() -> None:
            handles.append(await grouped_call(served, None, "job"))

        await _calls_of(call, 5)
        assert len({id(h) for h in handles}) == 1 and handles[0] is not first
        assert served.orchestrator.tracker.task_scope("alpha/job").totals.calls == 6


async def _calls_of(call: Any, n: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(call)


async def test_r1_2_a_grouped_task_that_ran_out_of_time_is_refused_once_forgotten(
    tmp_path: Path
) -> None:
    """#21, R1.1: ``alpha/job``'s ``task_budget.time_s`` runs out (not idle): the run
    forgets it all the same, and its calls are still refused (its budget is spent)."""
    async with _served(tmp_path, task_budget={"time_s": 30}) as served:
        first = await grouped_call(served, None, "job")
        await anyio.sleep(31)
        assert first.finished and not _held(served, "alpha/job")
        with pytest.raises(GroupEndedError, match="alpha/job has ended"):
            await grouped_call(served, None, "job")
        await grouped_call(served, None, "other")


async def test_r3_4_budget_added_to_a_held_task_survives_its_idle_restart(
    tmp_path: Path
) -> None:
    """#21, R3.4: ``alpha/job`` (a ``hold`` key, ``task_budget`` 200 tokens) is held at
    its budget; a person adds 500 tokens and the call completes.  After the task idles
    out and starts again, its limit is still 700: the next call is served, not held."""
    async with _served(tmp_path, on_limit="hold", task_budget={"tokens": 200}) as served:
        controller = served.orchestrator.controller
        await grouped_call(served, None, "job")
        async with anyio.create_task_group() as tg:
            tg.start_soon(grouped_call, served, None, "job")  # 150 spent: this one is held
            while not controller.is_paused("alpha/job"):  # noqa: ASYNC110 - not signalled
                await anyio.sleep(1)
            await served.orchestrator.decide("alpha/job", "add_budget", tokens=500)
        await anyio.sleep(IDLE_S + 1)
        assert not _held(served, "alpha/job")
        with anyio.fail_after(10):  # held until max_hold_s without the added budget
            await grouped_call(served, None, "job")
        scope = served.orchestrator.tracker.task_scope("alpha/job")
        assert (scope.limits.tokens, scope.totals.tokens) == (700, 450)


async def test_r1_2_an_idle_task_leaves_the_metrics(tmp_path: Path) -> None:
    """#21: the per-task series of a grouped task (``vibe_task_tokens_total{task}``…)
    go when it idles out, so a long-running serve does not export one per name."""
    served = Served(config_from_dict({**_data(tmp_path), "metrics": {
                        "textfile": str(tmp_path / "serve.prom")}}),
                    env={"KEY_A": "sk-a"}, provider=_provider())
    async with served.running():
        metrics = served.orchestrator.observers.metrics
        assert metrics is not None
        await grouped_call(served, None, "chat")
        assert 'task="alpha/chat"' in generate_latest(metrics.registry).decode()
        await anyio.sleep(IDLE_S + 1)
        assert not _held(served, "alpha/chat")
        assert 'task="alpha/chat"' not in generate_latest(metrics.registry).decode()


async def test_r1_2_without_group_idle_s_grouped_tasks_stay(tmp_path: Path) -> None:
    """#21: ``group_idle_s = 0`` keeps every grouped task until serve stops."""
    async with _served(tmp_path, idle_s=0) as served:
        handle = await grouped_call(served, None, "job")
        await anyio.sleep(10 * IDLE_S)
        assert not handle.finished and _held(served, "alpha/job")


@pytest.mark.parametrize(("value", "reason"), [
    (-1, "greater than or equal to 0"), ("soon", "valid number"), (float("inf"), "finite")])
def test_r1_2_a_bad_group_idle_s_names_the_field(tmp_path: Path, value: Any,
                                                 reason: str) -> None:
    """#21: a negative, non-numeric or infinite ``group_idle_s`` is refused in one line
    naming the field and what is wrong with the value."""
    with pytest.raises(ConfigError, match=rf"serve\.group_idle_s=.*{reason}"):
        config_from_dict(_data(tmp_path, value))


@pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, the fake API
async def test_r1_2_a_client_conversation_idles_out_and_resumes_over_http(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R1.2: through the SDK, ``alpha/chat`` answers, idles out after 0.2 s (gone
    from the run), answers again as the same task (its totals continue), and the run's
    report lists it once with both calls."""
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A"}]
    config = serve_config(tmp_path, fake_api.base_url, keys, group_idle_s=0.2)
    async with (serving(config) as run, AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        orch = run.served.orchestrator

        async def ask() -> None:
            reply = await aio.messages.create(model="claude-haiku-4-5", max_tokens=16,
                                              messages=GROUPED_USER,
                                              extra_headers={"x-vibe-task": "chat"})
            assert reply.content

        await ask()
        first = await run.settled("alpha/chat", 1)
        with anyio.fail_after(10):
            while "alpha/chat" in orch.handles:  # noqa: ASYNC110 - forgetting is not signalled
                await anyio.sleep(0.05)
        assert not _held(run.served, "alpha/chat")
        await ask()
        totals = await run.settled("alpha/chat", 2)
        assert totals.tokens == 2 * first.tokens and fake_api.requests == 2
    report = run.served.report
    assert report is not None
    outcome = report.outcomes["alpha/chat"]  # once: its last run, both runs' use
    assert (outcome.status, outcome.usage.calls) == ("completed", 2)
    assert report.total.calls == 2  # each call counted once
