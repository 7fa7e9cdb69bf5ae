"""#21 the governed drop-in client: ``governed_client`` / ``governed_async_client`` give the
official SDK's own ``Anthropic`` / ``AsyncAnthropic`` whose calls take serve's governed
path in this process (R2.1 usage per call, R2.3 settled from the upstream's usage, R1.2
the key's task budget, R3.4 hold at the limit).  The upstream is the project's fake API
over real HTTP; ``status --json`` and ``decide`` run through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2 as httpx
import pytest

from agents.fake_api import FakeAnthropicServer, open_fake_api
from scheduler import ConfigError, VibeConfig, config_from_dict
from scheduler.serve import governed_async_client, governed_client
from scheduler.serve._transport import AppTransport

# the fake API answers over real HTTP and the sync client's run has a thread of its own
pytestmark = pytest.mark.real_asyncio
BIN = str(Path(sys.executable).parent / "vibe-engine")
MODEL = "claude-sonnet-4-6"
HELLO: Any = [{"role": "user", "content": "Say hello."}]
TOOLS: Any = [{"name": "get_weather", "description": "The weather in a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]
TOOL_SCRIPT: list[dict[str, Any]] = [
    {"id": "msg_t1", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_w1", "name": "get_weather",
         "input": {"city": "Oslo"}}], "stop_reason": "tool_use"},
    {"id": "msg_t2", "content": [
        {"type": "tool_use", "id": "toolu_w2", "name": "get_weather",
         "input": {"city": "Bergen"}}], "stop_reason": "tool_use"},
    {"id": "msg_t3", "content": [{"type": "text", "text": "Oslo 3 °C, Bergen 6 °C."}],
     "stop_reason": "end_turn"},
]


@pytest.fixture
def api() -> Iterator[FakeAnthropicServer]:
    with open_fake_api() as server:
        yield server


def _config(api: FakeAnthropicServer, state: Path, **key: Any) -> VibeConfig:
    serve: dict[str, Any] = {"upstream_base_url": api.base_url}
    if key:
        serve["keys"] = [{"name": "app", "key_sha256": "ab" * 32, **key}]
    return config_from_dict({"state_dir": str(state), "store": "sqlite", "serve": serve})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``vibe-engine ARGS`` in a process of its own, as a person at another terminal."""
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)


def _status_task(state: Path, task_id: str) -> dict[str, Any]:
    out = _cli("status", "--json", "--state-dir", str(state))
    assert out.returncode == 0, out.stderr
    rows: dict[str, dict[str, Any]] = {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}
    return rows[task_id]


def _reported_tokens(api: FakeAnthropicServer) -> int:
    return sum(api.reported_totals().values())


async def test_21_async_client_create_stream_count_and_usage_per_key(
        api: FakeAnthropicServer, tmp_path: Path) -> None:
    """#21, R2.1/R2.3: an AsyncAnthropic from ``governed_async_client`` (a config without
    keys gets the key ``client``): create, stream (text_stream and get_final_message),
    count_tokens and the models list answer as the SDK's own types; after the block,
    ``status --json`` shows the key's calls and exactly the tokens the upstream reported."""
    state = tmp_path / "st"
    async with governed_async_client(_config(api, state)) as client:
        assert isinstance(client, anthropic.AsyncAnthropic)
        msg = await client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
        assert isinstance(msg, anthropic.types.Message) and msg.content[0].type == "text"
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as s:
            text = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
        assert text and final.content[0].type == "text" and final.content[0].text == text
        assert final.usage.output_tokens > 0
        count = await client.messages.count_tokens(model=MODEL, messages=HELLO)
        assert isinstance(count, anthropic.types.MessageTokensCount) and count.input_tokens > 0
        ids = [m.id async for m in client.models.list()]
        assert MODEL in ids and "vibe-auto" in ids
    row = await anyio.to_thread.run_sync(_status_task, state, "client")  # runs its own loop
    assert row["calls"] == 2 == len(api.reported)  # count_tokens is not a paid call
    assert row["tokens"] == _reported_tokens(api)
    assert row["tokens"] == (msg.usage.input_tokens + msg.usage.output_tokens
                             + final.usage.input_tokens + final.usage.output_tokens)


def test_21_sync_client_create_stream_count_and_usage_per_key(
        api: FakeAnthropicServer, tmp_path: Path) -> None:
    """#21, R2.1/R2.3: the same through ``governed_client`` (an ``anthropic.Anthropic``
    whose run lives on a portal thread), called from two threads at once."""
    state = tmp_path / "st"
    with governed_client(_config(api, state, budget={"tokens": 100_000})) as client:
        assert isinstance(client, anthropic.Anthropic)
        msg = client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
        assert msg.stop_reason == "end_turn" and msg.usage.output_tokens > 0
        with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert text and final.content[0].type == "text" and final.content[0].text == text
        assert client.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens > 0
        threads = [threading.Thread(target=client.messages.create,
                                    kwargs={"model": MODEL, "max_tokens": 32,
                                            "messages": HELLO}) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    row = _status_task(state, "app")
    assert row["calls"] == 6 == len(api.reported)
    assert row["tokens"] == _reported_tokens(api)


async def test_21_a_stream_closed_early_is_still_settled(
        api: FakeAnthropicServer, tmp_path: Path) -> None:
    """#21, R2.1: the application leaves a stream after its first text; the governed call
    still reads the upstream's answer to its end and charges the key what was reported."""
    state = tmp_path / "st"
    async with (governed_async_client(_config(api, state)) as client,
                client.messages.stream(model=MODEL, max_tokens=200, messages=HELLO) as s):
        async for _ in s.text_stream:
            break
    assert len(api.reported) == 1 and api.reported[0].complete
    row = await anyio.to_thread.run_sync(_status_task, state, "client")
    assert row["calls"] == 1 and row["tokens"] == _reported_tokens(api)


def test_21_tool_use_over_several_turns_passes_through_intact(
        api: FakeAnthropicServer, tmp_path: Path) -> None:
    """#21: a tool loop of three turns through the sync client — the tool_use blocks come
    back as the upstream sent them and the tool_result turns reach the upstream intact."""
    api.load_script(TOOL_SCRIPT)
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo and Bergen?"}]
    with governed_client(_config(api, tmp_path / "st")) as client:
        for turn in range(3):
            msg = client.messages.create(model=MODEL, max_tokens=256, tools=TOOLS,
                                         messages=messages)
            assert msg.id == TOOL_SCRIPT[turn]["id"]
            if msg.stop_reason != "tool_use":
                break
            uses = [b for b in msg.content if b.type == "tool_use"]
            messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                           for b in msg.content]},
                         {"role": "user", "content": [
                             {"type": "tool_result", "tool_use_id": u.id, "content": "3 °C"}
                             for u in uses]}]
    assert msg.content[0].type == "text" and "Bergen" in msg.content[0].text
    sent = api.scripted_requests
    assert len(sent) == 3 and sent[2]["tools"] == TOOLS
    assert sent[2]["messages"][1]["content"] == TOOL_SCRIPT[0]["content"]
    assert sent[2]["messages"][4]["content"][0]["tool_use_id"] == "toolu_w2"


def test_21_reject_at_the_key_budget_is_not_retried(
        api: FakeAnthropicServer, tmp_path: Path) -> None:
    """#21, R1.2: a ``reject`` key at its token budget gets the SDK's BadRequestError naming
    the budget and how to raise it; the SDK does not retry it and nothing reaches the
    upstream; the spend stays what the upstream reported."""
    state = tmp_path / "st"
    with governed_client(_config(api, state, budget={"tokens": 100})) as client:
        client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
        before = api.requests
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    body: Any = err.value.body
    message = body["error"]["message"]
    assert err.value.status_code == 400 and body["error"]["type"] == "invalid_request_error"
    assert "budget limit" in message and "task:app tokens" in message
    assert "serve.keys[name='app'].budget.tokens" in message
    assert api.requests == before  # refused before the upstream, and not retried
    assert _status_task(state, "app")["tokens"] == _reported_tokens(api)


def _decide_when_held(state: Path, api: FakeAnthropicServer, seen: list[int]) -> None:
    """Once ``status`` shows the key paused, ``vibe-engine decide app add`` (the CLI)."""
    for _ in range(300):
        if _status_task(state, "app")["status"] == "paused":
            seen.append(len(api.reported))  # what the upstream had answered while held
            out = _cli("decide", "app", "add", "--tokens", "5000", "--state-dir", str(state))
            assert out.returncode == 0, out.stderr
            return
        threading.Event().wait(0.1)
    raise AssertionError("the key was never shown paused")


@pytest.mark.slow
async def test_21_hold_at_the_key_budget_waits_for_decide_then_completes(
        api: FakeAnthropicServer, tmp_path: Path) -> None:
    """#21, R3.4: a ``hold`` key at its limit: the streamed request waits, its key shown
    paused by ``status``, until ``vibe-engine decide app add --tokens`` adds budget; then
    it completes with the upstream's answer."""
    state = tmp_path / "st"
    cfg = _config(api, state, budget={"tokens": 100}, on_limit="hold")
    seen: list[int] = []
    async with governed_async_client(cfg) as client:
        await client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, _decide_when_held, state, api, seen)
            async with client.messages.stream(model=MODEL, max_tokens=64,
                                              messages=HELLO) as s:
                final = await s.get_final_message()
    assert seen == [1]  # held: nothing was forwarded until the decision
    assert final.stop_reason == "end_turn" and len(api.reported) == 2
    row = await anyio.to_thread.run_sync(_status_task, state, "app")
    assert row["tokens"] == _reported_tokens(api)


def test_21_unknown_key_name_is_one_clear_error(tmp_path: Path) -> None:
    """#21: naming a key the config lacks fails before anything runs, naming ``key``."""
    cfg = config_from_dict({"state_dir": str(tmp_path / "st"), "serve": {
        "upstream_base_url": "http://127.0.0.1:9", "keys": [
            {"name": "a", "key_sha256": "ab" * 32}, {"name": "b", "key_sha256": "cd" * 32}]}})
    with pytest.raises(ConfigError) as err, governed_client(cfg, key="nope"):
        pass
    assert err.value.field == "key" and "a, b" in str(err.value)
    with pytest.raises(ConfigError) as err, governed_client(cfg):
        pass
    assert err.value.field == "key"
    bare = config_from_dict({"state_dir": str(tmp_path / "st")})  # no keys: one is made
    with pytest.raises(ConfigError) as err, governed_client(bare, key="../etc"):
        pass
    assert err.value.field == "key"
    assert not (tmp_path / "st").exists()


async def test_21_in_process_transport_streams_as_the_app_sends() -> None:
    """#21: the in-process transport hands each body chunk over when the app sends it
    (httpx's ASGITransport would hold the first until the app ends: a deadlock here)."""
    first_read = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await first_read.wait()
        await send({"type": "http.response.body", "body": b"two", "more_body": False})

    async with anyio.create_task_group() as tg:
        transport = AppTransport(app, tg)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as c:
            with anyio.fail_after(5):
                async with c.stream("POST", "/x", content=b"{}") as resp:
                    chunks = []
                    async for chunk in resp.aiter_raw():
                        chunks.append(chunk)
                        first_read.set()
    assert chunks == [b"one", b"two"]


def test_21_docs_example_governs_its_calls(api: FakeAnthropicServer, tmp_path: Path) -> None:
    """#21: docs/examples/governed_client.py runs as the guide says, on the example
    serve.toml (only the fake API's port changed); status shows its two calls under
    ``my-agent`` with the tokens the upstream reported."""
    root = Path(__file__).resolve().parents[1]
    example = (root / "docs" / "examples" / "serve.toml").read_text()
    config = tmp_path / "serve.toml"
    config.write_text(example.replace("http://127.0.0.1:8765", api.base_url))
    env = {**os.environ, "VIBE_CLIENT_KEY": "sk-example-client"}
    out = subprocess.run([sys.executable, str(root / "docs" / "examples" / "governed_client.py"),
                          str(config)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tokens out" in out.stdout
    row = _status_task(tmp_path / ".vibe-engine", "my-agent")
    assert row["calls"] == 2 == len(api.reported)
    assert row["tokens"] == _reported_tokens(api)


async def test_21_in_process_transport_says_disconnect_once_the_app_answered() -> None:
    """#21: as ASGI has it, ``receive()`` after the app sent its whole response says
    ``http.disconnect`` (serve's watch for a client leaving ends by that, uncancelled)."""
    seen: list[str] = []
    told = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["type"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})
        seen.append((await receive())["type"])
        told.set()

    async with anyio.create_task_group() as tg:
        transport = AppTransport(app, tg)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as c, \
                c.stream("POST", "/v1/messages", content=b"{}") as resp:
            with anyio.fail_after(5):  # before the caller read or closed the body
                await told.wait()
            assert await resp.aread() == b"{}"
    assert seen == ["http.request", "http.disconnect"]


async def test_21_in_process_transport_tells_the_app_a_caller_gave_up() -> None:
    """#21: a call cancelled while the app has not answered (a held or queued request)
    shows the app ``http.disconnect``, as a client closing its connection does to serve
    (which then drops a request not yet sent upstream)."""
    seen: list[str] = []
    left = [anyio.Event(), anyio.Event()]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["type"])
        seen.append((await receive())["type"])  # waits until the caller leaves
        left[len(seen) // 2 - 1].set()

    async with anyio.create_task_group() as tg:
        transport = AppTransport(app, tg)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as c:
            with anyio.move_on_after(0.2):
                await c.post("/v1/messages", content=b"{}")
            with anyio.fail_after(5):
                await left[0].wait()
            # the SDK's read timeout: an httpx timeout, the app told likewise
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/v1/messages", content=b"{}", timeout=httpx.Timeout(0.2))
            with anyio.fail_after(5):
                await left[1].wait()
    assert seen == ["http.request", "http.disconnect"] * 2
