"""A ``hold`` key at its budget limit waits for a person's decision (R3.4, #21): the held
streaming request gets SSE pings, ``vibe-engine status`` shows the key paused, and
``vibe-engine decide KEY add …`` from another process lets the request complete."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler.store import SqliteStore
from scheduler.store._ledger import Hold, ScopeLimit
from tests._anthropic_helpers import fake_api
from tests._serve_helpers import BIN, CLIENT_KEYS, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

KEY = CLIENT_KEYS["VIBE_KEY_A"]
BODY: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 1000, "stream": True,
        "messages": [{"role": "user", "content": "Summarise the design in one line."}]}


async def _cli(*args: str) -> str:
    done = await anyio.run_process([str(BIN), *args], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.mark.real_asyncio  # real sockets and a second process
async def test_r3_4_held_request_completes_after_decide_from_another_process(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R3.4 through serve (#21): the request over the key's budget is held (pings keep
    the stream alive), shows as paused in ``status --json``, and completes once
    ``vibe-engine decide alpha add --tokens 5000`` runs in another process."""
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "hold",
             "budget": {"tokens": 600}}]
    data = serve_config(tmp_path, fake_api.base_url, keys, ping_interval_s=0.2)
    state = str(tmp_path / "state")
    async with serving(data) as run, httpx2.AsyncClient(base_url=run.url) as http:
        first = await http.post("/v1/messages", json={**BODY, "stream": False,
                                                      "max_tokens": 64},
                                headers={"x-api-key": KEY})
        assert first.status_code == 200
        events: list[str] = []

        async def held() -> None:
            async with http.stream("POST", "/v1/messages?beta=true", json=BODY,
                                   headers={"x-api-key": KEY,
                                            "anthropic-version": "2023-06-01"},
                                   timeout=60) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("event: "):
                        events.append(line[7:])

        controller = run.served.orchestrator.controller
        async with anyio.create_task_group() as tg:
            tg.start_soon(held)
            with anyio.fail_after(20):
                # polled: the pause and the pings are observed, not signalled to tests
                while getattr(controller.pause_info("alpha"), "state", "") != "paused":  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                while "ping" not in events:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            status = json.loads(await _cli("status", "--json", "--state-dir", state))
            assert next(r["paused"] for r in status["task_budgets"] if r["task_id"] == "alpha")
            assert fake_api.requests == 1  # held before the upstream
            reply = await _cli("decide", "alpha", "add", "--tokens", "5000",
                               "--state-dir", state)
            assert "add_budget for alpha" in reply
        assert events[-1] == "message_stop" and "message_start" in events
        assert fake_api.requests == 2
        assert run.totals("alpha").calls == 2


@pytest.mark.real_asyncio  # real sockets
async def test_r3_4_hold_is_bounded_by_max_hold_s(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21: without a decision a held request is refused after ``serve.max_hold_s`` with
    an error the SDK does not retry; a streamed one gets it as the API's error event."""
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "hold",
             "budget": {"tokens": 100}}]
    data = serve_config(tmp_path, fake_api.base_url, keys, max_hold_s=0.3, ping_interval_s=0.1)
    async with (serving(data) as run,
                anthropic.AsyncAnthropic(base_url=run.url, api_key=KEY, max_retries=2) as aio):
        with pytest.raises(anthropic.BadRequestError) as refused:
            await aio.messages.create(**{**BODY, "stream": False})
        assert "no decision within serve.max_hold_s = 0.3 s" in str(refused.value)
        with pytest.raises(anthropic.APIStatusError) as in_stream:
            async with aio.messages.stream(**{k: v for k, v in BODY.items()
                                              if k != "stream"}) as s:
                await s.get_final_message()
        assert "no decision within" in str(in_stream.value)
        assert fake_api.requests == 0


@pytest.mark.real_asyncio  # real sockets
async def test_r3_4_a_client_leaving_while_held_takes_its_request_with_it(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21: a held streaming client that disconnects is not served later: after the
    decision nothing goes upstream and nothing is charged for it."""
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "hold",
             "budget": {"tokens": 100}}]
    data = serve_config(tmp_path, fake_api.base_url, keys, ping_interval_s=0.1)
    async with serving(data) as run:
        async with httpx2.AsyncClient(base_url=run.url) as http, \
                http.stream("POST", "/v1/messages", json=BODY, headers={"x-api-key": KEY},
                            timeout=30) as resp:
            async for line in resp.aiter_lines():
                if line == "event: ping":
                    break  # held: leave
        controller = run.served.orchestrator.controller
        with anyio.fail_after(10):
            while run.served.requests.get("alpha", 0) == 0:  # noqa: ASYNC110 - observed
                await anyio.sleep(0.05)
        await controller.decide("alpha", "add_budget", tokens=5000)
        await anyio.sleep(0.3)  # a request still waiting would go upstream now
        assert fake_api.requests == 0 and run.totals("alpha").calls == 0


@pytest.mark.real_asyncio  # real sockets
async def test_r3_4_a_json_client_leaving_while_held_takes_its_request_with_it(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21: the same for a non-streamed request (no pings to see: the client gives up
    after a while); after the decision nothing goes upstream and nothing is charged."""
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "hold",
             "budget": {"tokens": 100}}]
    async with serving(serve_config(tmp_path, fake_api.base_url, keys)) as run:
        async with httpx2.AsyncClient(base_url=run.url) as http:
            with pytest.raises(httpx2.ReadTimeout):
                await http.post("/v1/messages", json={**BODY, "stream": False},
                                headers={"x-api-key": KEY}, timeout=1.0)
        with anyio.fail_after(10):
            while run.served.requests.get("alpha", 0) == 0:  # noqa: ASYNC110 - observed
                await anyio.sleep(0.05)
        await run.served.orchestrator.controller.decide("alpha", "add_budget", tokens=5000)
        await anyio.sleep(0.3)  # a request still waiting would go upstream now
        assert fake_api.requests == 0 and run.totals("alpha").calls == 0


class _FirstHoldWaits(SqliteStore):
    """A shared store whose first budget check waits for ``gate`` (a check slowed by a busy
    file): it is checked against the limits as they were when it was asked."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.waiting, self.gate = anyio.Event(), anyio.Event()

    def try_reserve(self, hold_id: str, limits: tuple[ScopeLimit, ...], *, model: str,
                    tokens: int, cost_usd: float) -> Coroutine[Any, Any, Hold]:
        first = not self.waiting.is_set()
        self.waiting.set()
        held = super().try_reserve(hold_id, limits, model=model, tokens=tokens,
                                   cost_usd=cost_usd)
        if not first:
            return held

        async def later() -> Hold:
            await self.gate.wait()
            return await held

        return later()


@pytest.mark.real_asyncio  # real sockets
async def test_r3_4_a_check_crossing_the_decision_does_not_pause_the_key_again(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R3.4 on a shared store: a request whose budget check was under way when
    ``decide alpha add`` raised the key's budget, and came back refused by the old limit,
    checks again instead of pausing the key anew (it used to wait for a second decision
    that nobody was asked for, then be refused at ``max_hold_s``)."""
    db = tmp_path / "shared.db"
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "hold",
             "budget": {"tokens": 1000}}]
    data = serve_config(tmp_path, fake_api.base_url, keys, max_hold_s=3.0)
    body = {**BODY, "stream": False, "max_tokens": 300}
    store, other = _FirstHoldWaits(db), SqliteStore(db)
    codes: list[int] = []
    async with serving(data, store=store) as run, httpx2.AsyncClient(base_url=run.url) as http:

        async def call() -> None:
            resp = await http.post("/v1/messages", json=body, headers={"x-api-key": KEY},
                                   timeout=30)
            codes.append(resp.status_code)

        controller = run.served.orchestrator.controller
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)  # its check waits at the gate, under the limit of 1,000
            with anyio.fail_after(10):
                await store.waiting.wait()
            await other.open()  # another replica holds 900 of the key's 1,000
            await other.try_reserve("replica-b:hold", (ScopeLimit("task:alpha", tokens=9000),),
                                    model="", tokens=900, cost_usd=0.0)
            tg.start_soon(call)  # refused by the shared check: the key pauses
            with anyio.fail_after(10):
                while getattr(controller.pause_info("alpha"), "state", "") != "paused":  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            await controller.decide("alpha", "add_budget", tokens=1000)
            with anyio.fail_after(10):
                while controller.statistics().decisions_applied < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            store.gate.set()  # the first check comes back: over the limit it was asked with
        await other.aclose()
    assert codes == [200, 200], codes
    assert fake_api.requests == 2 and controller.statistics().decisions_applied == 1
