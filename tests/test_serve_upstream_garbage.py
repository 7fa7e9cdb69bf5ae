"""An upstream that is not the API (a broken proxy, a garbled answer) behind ``vibe-engine
serve``: a 200 whose body is no JSON message is the upstream's failure, answered ``502
api_error`` in the API's shape (it was a ``500`` naming serve's own ``UnicodeDecodeError``);
usage counts that are no counts (NaN, infinite, negative) are not charged as tokens (NaN
was a ``500`` ``ValueError``, -5 a ``400`` blaming the client); the server serves on."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest
from anyio.abc import SocketStream

from scheduler.core import get_logger
from scheduler.observe import configure_logging
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

pytestmark = pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, this upstream

KEY = CLIENT_KEYS["VIBE_KEY_A"]
HAIKU = "claude-haiku-4-5"
GOOD = {"id": "msg_1", "type": "message", "role": "assistant", "model": HAIKU,
        "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 7}}


def _answer(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _serve_one(stream: SocketStream, answers: list[bytes]) -> None:
    with contextlib.suppress(anyio.EndOfStream):  # serve closed a connection it distrusts
        await _answer_each(stream, answers)


async def _answer_each(stream: SocketStream, answers: list[bytes]) -> None:
    async with stream:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                buf += await stream.receive()
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(buf) < length:
                buf += await stream.receive()
            buf = buf[length:]
            await stream.send(_answer(answers.pop(0)))


@asynccontextmanager
async def upstream(answers: list[bytes]) -> AsyncIterator[str]:
    """An HTTP/1.1 upstream on a free port answering each request with the next body."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, lambda s: _serve_one(s, answers))
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


def _usage(**counts: Any) -> bytes:
    return json.dumps({**GOOD, "usage": counts}).encode()


async def test_r6_3_an_upstream_answer_that_is_no_message_is_a_502_and_serve_goes_on(
    tmp_path: Path
) -> None:
    """R6.3: garbled bytes and a JSON list in a 200 get ``502 api_error`` (the API's error
    shape); NaN, infinite and negative counts are not charged as counts: the answer was
    billed all the same, so it is charged its estimate, marked so (R2.1); nothing stays
    held and the next good answer is charged what it reported."""
    answers = [b"\x00\xffnot json", b"[1, 2]",
               b'{"id": "m", "type": "message", "role": "assistant", "model": "' + HAIKU.encode()
               + b'", "content": [], "stop_reason": "end_turn", "usage": '
               b'{"input_tokens": NaN, "output_tokens": Infinity}}',
               _usage(input_tokens=-5, output_tokens=10**30), json.dumps(GOOD).encode()]
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A"}]
    async with (upstream(answers) as url, serving(serve_config(tmp_path, url, keys)) as run,
                anthropic.AsyncAnthropic(base_url=run.url, api_key=KEY, max_retries=0) as sdk):
        hi: Any = [{"role": "user", "content": "hi"}]
        for _ in range(2):
            with pytest.raises(anthropic.APIStatusError) as failed:
                await sdk.messages.create(model=HAIKU, max_tokens=8, messages=hi)
            assert failed.value.status_code == 502
            error = failed.value.body["error"]  # type: ignore[index]
            assert error["type"] == "api_error", error
            assert "no JSON message" in error["message"], error
        for _ in range(2):  # relayed as the upstream sent them; charged at the estimate
            await sdk.messages.create(model=HAIKU, max_tokens=8, messages=hi)
        estimated = run.totals("alpha").copy()
        assert estimated.completion_tokens == 2 * 8  # all the output each could have made
        events = await run.served.orchestrator.store.events(task_id="alpha")
        assert [e.event_id.endswith(":estimate") for e in events] == [True, True]
        reply = await sdk.messages.create(model=HAIKU, max_tokens=8, messages=hi)
        assert reply.usage.output_tokens == 7
        charged = run.totals("alpha")
        assert (charged.prompt_tokens - estimated.prompt_tokens,
                charged.completion_tokens - estimated.completion_tokens) == (10, 7)
        assert run.served.orchestrator.allocator.statistics().leases == 0
        scope = run.served.orchestrator.tracker.task_scope("alpha")
        assert (scope.reserved_tokens, scope.reserved_cost) == (0, 0.0)


def test_r7_5_a_failure_logged_as_json_lines_carries_its_traceback(
    capsys: pytest.CaptureFixture[str]
) -> None:
    """R7.5: ``serve`` (and ``run`` off a terminal) log JSON lines; a request that failed
    in an unforeseen way was logged as ``"exc_info": true`` with no trace of what failed.
    The line now carries the exception and its traceback as text."""
    configure_logging(level="info", json_logs=True)
    try:
        raise LookupError("what failed")
    except LookupError:
        get_logger("vibe_engine.serve").exception("serve_request_failed", key="alpha")
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["event"] == "serve_request_failed"
    assert "exc_info" not in record
    assert "LookupError: what failed" in record["exception"]
    assert record["exception"].startswith("Traceback")
