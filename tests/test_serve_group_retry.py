"""#21 a grouped task (``x-vibe-task``) whose start failed is started again (R1.2).

The start reads the task's totals from the store; when that read fails (the store is
briefly unavailable) the calls waiting for the start get a 503 naming the task, and a
later call under the same name starts it again instead of the name staying broken
until serve restarts.  Calls that arrive while a start is in flight wait for it: one
start per group at a time.  A grouped task that ran and has ended (its wall-time budget
ran out) is not started again: its budget is spent, so its calls are refused (400,
not retried).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler.core import StoreUnavailableError, Totals, VibeEngineError
from scheduler.store import MemoryStore
from scheduler.tasks import TaskStatus
from tests._anthropic_helpers import fake_api
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

pytestmark = pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, the fake API

MODEL = "claude-haiku-4-5"
USER: Any = [{"role": "user", "content": "One word, please."}]
SCOPE = "task:alpha/job"


class _StoreDownAtFirst(MemoryStore):
    """A memory store whose first ``failures`` reads of one scope's totals fail (as a
    Redis store that is briefly down); the first read waits for ``gate`` when given."""

    def __init__(self, scope: str, failures: int = 1, gate: anyio.Event | None = None) -> None:
        super().__init__()
        self.scope, self.failures, self.gate = scope, failures, gate
        self.reads = 0

    async def totals(self, scope: str) -> Totals:
        if scope == self.scope:
            self.reads += 1
            if self.reads == 1 and self.gate is not None:
                await self.gate.wait()
            if self.reads <= self.failures:
                raise StoreUnavailableError("redis: connection refused")
        return await super().totals(scope)


def _config(tmp_path: Path, upstream: str) -> dict[str, Any]:
    return serve_config(tmp_path, upstream, [{"name": "alpha", "key_env": "VIBE_KEY_A"}])


async def _ask(aio: anthropic.AsyncAnthropic, task: str) -> anthropic.types.Message:
    return await aio.messages.create(model=MODEL, max_tokens=16, messages=USER,
                                     extra_headers={"x-vibe-task": task})


async def test_r1_2_a_grouped_task_whose_start_failed_starts_on_the_next_call(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R1.2 / #21: the first start of ``alpha/job`` cannot read its totals (503 naming the
    task); the store is back for the next call, which starts the task and is served."""
    store = _StoreDownAtFirst(SCOPE)
    async with (serving(_config(tmp_path, fake_api.base_url), store=store) as run,
                AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        with pytest.raises(anthropic.InternalServerError) as refused:
            await _ask(aio, "job")
        assert refused.value.status_code == 503
        assert "alpha/job could not start" in str(refused.value)
        assert (await _ask(aio, "job")).content
        assert store.reads == 2 and fake_api.requests == 1
        handle = run.served.orchestrator.handles["alpha/job"]
        assert handle.status is TaskStatus.RUNNING
        assert run.totals("alpha/job").calls == 1


async def test_r1_2_calls_that_wait_for_one_start_share_it(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R1.2 / #21: three calls arriving while ``alpha/job`` starts make one start (one read
    of its totals), and all three learn that it failed; the next call starts it again."""
    gate = anyio.Event()
    store = _StoreDownAtFirst(SCOPE, gate=gate)
    async with serving(_config(tmp_path, fake_api.base_url), store=store) as run:
        served = run.served
        (entry,) = served.keys.entries()
        refused: list[str] = []

        async def group() -> None:
            try:
                await served.group(entry, "job")
            except VibeEngineError as exc:  # the serve's GroupUnavailableError
                refused.append(str(exc).partition(" could not start")[0])

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(group)
                while not store.reads:  # noqa: ASYNC110 - the fake store offers a count
                    await anyio.sleep(0.01)
                gate.set()
        assert refused == ["task alpha/job"] * 3 and store.reads == 1
        handle = await served.group(entry, "job")
        assert handle is not None and not handle.finished and store.reads == 2


@pytest.mark.parametrize("on_limit", ["reject", "hold"])
async def test_r1_2_a_grouped_task_that_ran_and_ended_refuses_its_calls(
    fake_api: FakeAnthropicServer, tmp_path: Path, on_limit: str
) -> None:
    """R1.2 / R1.1 / #21: ``alpha/job`` serves a call, then its ``task_budget.time_s`` runs
    out and the task ends.  Its next call gets a 400 the SDK does not retry, naming the
    task and the spent budget, and nothing reaches the upstream; a call under another
    name is served."""
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": on_limit,
             "task_budget": {"time_s": 0.2}}]
    config = serve_config(tmp_path, fake_api.base_url, keys)
    async with (serving(config) as run, AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=2))
        assert (await _ask(aio, "job")).content
        handle = run.served.orchestrator.handles["alpha/job"]
        with anyio.fail_after(10):
            await handle.done.wait()
        with pytest.raises(anthropic.BadRequestError) as refused:
            await _ask(aio, "job")
        message = str(refused.value)
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert "task alpha/job has ended" in message and "time_s" in message
        assert "another x-vibe-task name" in message and "task_budget" in message
        assert fake_api.requests == 1  # refused before the upstream, and not retried
        assert (await _ask(aio, "other")).content
        assert fake_api.requests == 2
