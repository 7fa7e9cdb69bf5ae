"""#21 grouping a serve client's calls into tasks with the ``x-vibe-task`` header.

Calls carrying ``x-vibe-task: NAME`` run as the task ``KEY/NAME`` of the serve run,
nested inside the key's budget (R1.2 nested budgets: task ⊂ key ⊂ session ⊂ day),
with the key's ``task_budget`` of its own.  The real SDK over real HTTP to ``serve``,
which forwards to the project's fake API; ``status --json`` runs through the CLI.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler.core import StoreUnavailableError, Totals
from scheduler.observe import snapshot_of
from scheduler.store import MemoryStore
from tests._anthropic_helpers import fake_api
from tests._redis_helpers import REDIS_URL
from tests._serve_helpers import BIN, CLIENT_KEYS, serve_config, serving


@asynccontextmanager
async def _two_replicas(tmp_path: Path, fake_api: FakeAnthropicServer, keys: Any,
                        redis_ns: str) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """Two serve replicas on one Redis namespace with ``keys``, and an SDK client of each:
    ``(a, b, client_a, client_b)``."""
    store = f"{REDIS_URL}?namespace={redis_ns}"
    a_data = {**serve_config(tmp_path / "a", fake_api.base_url, keys), "store": store}
    b_data = {**serve_config(tmp_path / "b", fake_api.base_url, keys), "store": store}
    async with (serving(a_data) as a, serving(b_data) as b, AsyncExitStack() as stack):
        aio_a, aio_b = [await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=r.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
            for r in (a, b)]
        yield a, b, aio_a, aio_b

__all__ = ["fake_api"]  # the fixture, imported for pytest

pytestmark = pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, the fake API

MODEL = "claude-haiku-4-5"
USER: Any = [{"role": "user", "content": "One word, please."}]
#: A key budget one call (about 27 tokens) fits in, leaving less than any estimate
#: (each holds at least max_tokens = 16), so the key is then at its limit everywhere.
KEY_TOKENS = 40


def _keys(**key: Any) -> list[dict[str, Any]]:
    return [{"name": "alpha", "key_env": "VIBE_KEY_A", **key}]


def _data(tmp_path: Path, upstream: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
    return {**serve_config(tmp_path, upstream, keys), "store": "sqlite"}


async def _ask(aio: anthropic.AsyncAnthropic, task: str | None) -> anthropic.types.Message:
    headers = {"x-vibe-task": task} if task is not None else {}
    return await aio.messages.create(model=MODEL, max_tokens=16, messages=USER,
                                     extra_headers=headers)


def _status_rows(state: Path) -> dict[str, dict[str, Any]]:
    out = subprocess.run([str(BIN), "status", "--json", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}


def _tokens(msg: anthropic.types.Message) -> int:
    return msg.usage.input_tokens + msg.usage.output_tokens


async def test_21_r1_2_grouped_tasks_report_their_own_use_and_the_key_their_sum(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R1.2: two tasks under one key via ``x-vibe-task``; ``status --json`` shows each
    task's calls and exactly the tokens the upstream reported for them, the key's row
    their sum (with its own ungrouped call), and the running key scope holds the same."""
    async with (serving(_data(tmp_path, fake_api.base_url, _keys())) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        a = [await _ask(aio, "fix-bug"), await _ask(aio, "fix-bug")]
        b = [await _ask(aio, "write-docs")]
        own = await _ask(aio, None)
        await run.settled("alpha", 4)
        handle = run.served.orchestrator.handles["alpha/fix-bug"]
        assert handle.spec.agent == "serve:alpha"
        reported = sum(r.input_tokens + r.output_tokens for r in fake_api.reported)
        assert run.totals("alpha").tokens == reported
        orch = run.served.orchestrator
        live = {t.task_id: t for t in snapshot_of(orch.view, now=0.0).tasks}
        assert (live["alpha"].calls, live["alpha"].tokens) == (4, reported)
        assert (live["alpha/fix-bug"].calls, live["alpha/fix-bug"].tokens) == (
            2, sum(_tokens(m) for m in a))
    rows = await anyio.to_thread.run_sync(_status_rows, tmp_path / "state")
    assert rows["alpha/fix-bug"]["calls"] == 2
    assert rows["alpha/fix-bug"]["tokens"] == sum(_tokens(m) for m in a)
    assert rows["alpha/write-docs"]["calls"] == 1
    assert rows["alpha/write-docs"]["tokens"] == _tokens(b[0])
    assert rows["alpha"]["calls"] == 4
    assert rows["alpha"]["tokens"] == sum(_tokens(m) for m in [*a, *b, own]) == reported
    usage = json.loads((tmp_path / "state" / "tasks" / "alpha" / "fix-bug" / "usage.json")
                       .read_text("utf-8"))
    assert usage["task_id"] == "alpha/fix-bug"


async def test_21_r1_2_a_task_budget_at_its_limit_refuses_that_task_only(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R1.2: with ``task_budget`` (a reject key), a grouped task past its own budget
    is refused with the API's 400 naming its budget, while the key's other task and the
    key's own calls go on."""
    keys = _keys(task_budget={"tokens": 60})
    async with (serving(_data(tmp_path, fake_api.base_url, keys)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        with pytest.raises(anthropic.BadRequestError) as refused:
            for _ in range(20):  # each call spends some of the 60 tokens
                await _ask(aio, "small")
        assert "task:alpha/small" in str(refused.value.body)
        spent = run.served.orchestrator.tracker.task_scope("alpha/small").totals.tokens
        assert 0 < spent <= 60 + 40  # refused at the limit, not long after
        assert (await _ask(aio, "other")).usage.output_tokens > 0
        assert (await _ask(aio, None)).usage.output_tokens > 0


async def test_21_r1_2_the_key_budget_at_its_limit_refuses_all_its_tasks(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R1.2: grouped use counts toward the key's budget; once the key is at its limit
    both of its grouped tasks (and its own calls) are refused, naming the key's budget."""
    keys = _keys(budget={"tokens": KEY_TOKENS})
    async with (serving(_data(tmp_path, fake_api.base_url, keys)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        with pytest.raises(anthropic.BadRequestError):
            for _ in range(20):
                await _ask(aio, "one")
        assert run.totals("alpha").tokens > 0  # the key holds what "one" spent
        for task in ("one", "two", None):
            with pytest.raises(anthropic.BadRequestError) as refused:
                await _ask(aio, task)
            assert "task:alpha" in str(refused.value.body)
        assert run.served.orchestrator.tracker.task_scope("alpha/two").totals.calls == 0


@pytest.mark.redis
async def test_21_r1_2_on_redis_grouped_use_counts_toward_the_key_in_every_replica(
    fake_api: FakeAnthropicServer, tmp_path: Path, redis_ns: str
) -> None:
    """#21, R1.2 across replicas: two serve runs on one Redis namespace; grouped calls on
    replica A use up the key's budget (Redis charges ``alpha/x`` to ``task:alpha`` too),
    so replica B refuses the key's other grouped task and its own calls."""
    keys = _keys(budget={"tokens": KEY_TOKENS})
    async with _two_replicas(tmp_path, fake_api, keys, redis_ns) as (a, b, aio_a, aio_b):
        with pytest.raises(anthropic.BadRequestError):
            for _ in range(20):
                await _ask(aio_a, "x")
        for task in ("y", None):
            with pytest.raises(anthropic.BadRequestError) as refused:
                await _ask(aio_b, task)
            assert "task:alpha " in str(refused.value.body)
        shared = await b.served.orchestrator.store.totals("task:alpha")
        assert shared.tokens == a.totals("alpha/x").tokens > 0


@pytest.mark.parametrize("bad", ["has space", "a/b", "..", "x" * 129, "ünï"])
async def test_21_a_bad_task_header_gets_a_400_naming_it(
    fake_api: FakeAnthropicServer, tmp_path: Path, bad: str
) -> None:
    """#21: an ``x-vibe-task`` that is not a valid task name is an invalid request naming
    the header; nothing is forwarded and no task is started."""
    async with (serving(_data(tmp_path, fake_api.base_url, _keys())) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        with pytest.raises(anthropic.BadRequestError) as refused:
            await _ask(aio, bad)
        assert "x-vibe-task" in str(refused.value.body)
        assert not fake_api.reported
        assert list(run.served.orchestrator.handles) == ["alpha"]


async def test_21_r3_4_a_held_grouped_task_is_decided_by_its_own_id(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R1.2/R3.4: a ``hold`` key's grouped task at its ``task_budget`` waits as task
    ``alpha/job``: ``status --json`` shows that task paused (not the key), and
    ``vibe-engine decide alpha/job add …`` from another process lets the call complete."""
    keys = _keys(on_limit="hold", task_budget={"tokens": 40})
    state = tmp_path / "state"
    async with (serving(_data(tmp_path, fake_api.base_url, keys)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        await _ask(aio, "job")  # spends the task's 40 tokens (or nearly)
        controller = run.served.orchestrator.controller
        answers: list[anthropic.types.Message] = []

        async def held() -> None:
            for _ in range(5):  # the call that crosses the limit is held
                answers.append(await _ask(aio, "job"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(held)
            await _paused(controller, "alpha/job")
            rows = await anyio.to_thread.run_sync(_status_budgets, state)
            assert rows["alpha/job"] and not rows.get("alpha", False)
            done = await anyio.run_process([str(BIN), "decide", "alpha/job", "add", "--tokens",
                                            "5000", "--state-dir", str(state)], check=False)
            assert done.returncode == 0, done.stderr.decode()
        assert len(answers) == 5
        assert run.totals("alpha/job").calls == 6


async def _paused(controller: Any, task_id: str) -> None:
    """Until ``task_id`` is paused (polled: the pause is observed, not signalled to tests)."""
    with anyio.fail_after(20):
        while getattr(controller.pause_info(task_id), "state", "") != "paused":  # noqa: ASYNC110
            await anyio.sleep(0.05)


def _status_budgets(state: Path) -> dict[str, bool]:
    """``status --json``'s task budget rows: paused or not, by task."""
    out = subprocess.run([str(BIN), "status", "--json", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    paused: dict[str, bool] = {}
    for row in json.loads(out.stdout)["task_budgets"]:
        paused[row["task_id"]] = paused.get(row["task_id"], False) or bool(row["paused"])
    return paused


async def test_21_r3_4_a_grouped_task_held_at_its_keys_budget_adds_to_the_key(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R1.2/R3.4: a grouped task held because its *key* is at its budget is paused
    on the key's scope; ``decide alpha/job add`` raises the key's budget (the exceeded
    scope), not the grouped task's own, and the held call completes."""
    keys = _keys(on_limit="hold", budget={"tokens": KEY_TOKENS})
    async with (serving(_data(tmp_path, fake_api.base_url, keys)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        await _ask(aio, "job")  # the key's budget is now too small for any estimate
        controller = run.served.orchestrator.controller
        answers: list[anthropic.types.Message] = []

        async def held() -> None:
            answers.append(await _ask(aio, "job"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(held)
            await _paused(controller, "alpha/job")
            assert controller.pause_info("alpha/job").scope == "task:alpha"  # type: ignore[union-attr]
            await controller.decide("alpha/job", "add_budget", tokens=5000)
            tg.cancel_scope.deadline = anyio.current_time() + 20  # answered, or fail
        assert len(answers) == 1
        tracker = run.served.orchestrator.tracker
        assert tracker.task_scope("alpha").limits.tokens == KEY_TOKENS + 5000


class _StoreDownFor(MemoryStore):
    """A memory store that cannot read one scope's totals (as a Redis store that is down)."""

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    async def totals(self, scope: str) -> Totals:
        if scope == self.scope:
            raise StoreUnavailableError("redis: connection refused")
        return await super().totals(scope)


async def test_21_a_grouped_task_that_cannot_start_gets_a_503_naming_why(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21: a grouped task whose start fails (its budget's totals cannot be read) answers
    its calls with a 503 that names the task and the reason -- not "serve is stopping" --
    and the key's other calls go on being served."""
    store = _StoreDownFor("task:alpha/doomed")
    async with (serving(serve_config(tmp_path, fake_api.base_url, _keys()), store=store) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        for _ in range(2):  # the first call starts the task; the next finds it ended
            with pytest.raises(anthropic.InternalServerError) as refused:
                await _ask(aio, "doomed")
            assert refused.value.status_code == 503
            message = str(refused.value)
            assert "alpha/doomed could not start" in message and "stopping" not in message
        assert (await _ask(aio, "fine")).content and (await _ask(aio, None)).content
        assert fake_api.requests == 2


async def test_21_r1_2_grouped_tasks_of_a_key_share_their_budget_objects(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21, R1.2: a key's grouped tasks share one budget object (the key's
    ``task_budget``, and its merge over the defaults) and the key's prompt (the router
    assesses them alike, once) rather than holding copies; each has its own id."""
    keys = _keys(task_budget={"tokens": 5_000})
    async with (serving(_data(tmp_path, fake_api.base_url, keys)) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        for name in ("one", "two", "three"):
            await _ask(aio, name)
        handles = [run.served.orchestrator.handles[f"alpha/{n}"] for n in ("one", "two")]
        first, second = handles
        assert first.spec.budget is second.spec.budget
        assert first.profile.limits is second.profile.limits
        assert first.profile.limits.tokens == 5_000
        assert first.spec.prompt is second.spec.prompt
        assert first.spec.prompt == "requests of serve key alpha"
        assert (first.id, second.id) == ("alpha/one", "alpha/two")


async def test_21_r1_1_on_redis_a_task_ended_on_its_budget_is_refused_by_every_replica(
    fake_api: FakeAnthropicServer, tmp_path: Path, redis_ns: str
) -> None:
    """#21, R1.1 across replicas: ``alpha/job`` runs out of its 1 s ``task_budget`` on
    replica A; the same name sent to replica B on the same Redis namespace gets the 400
    naming why it ended (B reads A's ``serve_ended`` record).  Before, B started the task
    afresh and its call ran: each replica renewed the spent budget."""
    keys = _keys(task_budget={"time_s": 1})
    async with _two_replicas(tmp_path, fake_api, keys, redis_ns) as (_a, b, aio_a, aio_b):
        await _ask(aio_a, "job")
        with anyio.fail_after(10):  # its 1 s runs out, then A records how it ended
            while not await b.served.orchestrator.store.get_state(  # noqa: ASYNC110
                    "serve_ended", "alpha/job"):  # another process writes it: no event here
                await anyio.sleep(0.05)
        for aio in (aio_a, aio_b):
            with pytest.raises(anthropic.BadRequestError) as refused:
                await _ask(aio, "job")
            assert "alpha/job has ended" in str(refused.value.body)
        await _ask(aio_b, "other")
