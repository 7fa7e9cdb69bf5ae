"""How serve reads JSON bodies and the API's usage objects (#21, R2.4), without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scheduler.core import Usage
from scheduler.serve._upstream import SseUsage, loads, usage_of

_BODY: Any = {"model": "claude-haiku-4-5", "max_tokens": 16,
              "messages": [{"role": "user", "content": "héllo ✓ 𝄞"}], "vibe_new": [1, None]}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_21_json_bodies_read_in_every_encoding_json_loads_reads(encoding: str) -> None:
    """#21: UTF-8 is read directly; a BOM or UTF-16/32 gets what ``json.loads`` gives."""
    raw = json.dumps(_BODY, ensure_ascii=False).encode(encoding)
    assert loads(raw) == json.loads(raw) == _BODY


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\xfa", b'{"a": 1} trailing', b""])
def test_21_bodies_json_loads_refuses_are_refused(raw: bytes) -> None:
    """#21: whatever ``json.loads`` refuses raises ``ValueError`` (the 400 answer)."""
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        loads(raw)


def test_r2_4_usage_read_with_cache_tokens_and_the_split() -> None:
    """R2.4: every count is read; a 1-hour share of the cache writes is split off, the
    rest are 5-minute writes (the API's default TTL)."""
    u = usage_of({"input_tokens": 12, "output_tokens": 8, "cache_read_input_tokens": 5,
                  "cache_creation_input_tokens": 7,
                  "cache_creation": {"ephemeral_1h_input_tokens": 3}})
    assert u == Usage(12, 8, 5, cache_write_5m_tokens=4, cache_write_1h_tokens=3)
    assert usage_of({"input_tokens": 1, "cache_creation_input_tokens": 9}) == Usage(
        1, 0, 0, cache_write_5m_tokens=9)


def test_r2_4_a_message_delta_keeps_what_it_does_not_repeat() -> None:
    """R2.4: a ``message_delta`` repeats only what changed (its counts cumulative): the
    fields it lacks, or sends as non-numbers, keep the ``message_start`` values."""
    start = usage_of({"input_tokens": 30, "output_tokens": 1, "cache_read_input_tokens": 4,
                      "cache_creation_input_tokens": 6,
                      "cache_creation": {"ephemeral_1h_input_tokens": 2}})
    delta = usage_of({"output_tokens": 25, "input_tokens": None}, start)
    assert delta == Usage(30, 25, 4, cache_write_5m_tokens=4, cache_write_1h_tokens=2)
    assert usage_of(None, start) is start and usage_of("x") == Usage()  # type: ignore[arg-type]


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _stream() -> bytes:
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {
        "input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 3}}}
    deltas = b"".join(_sse("content_block_delta", {
        "type": "content_block_delta", "index": 0,
        "delta": {"type": "text_delta", "text": f"event: message_delta {i}\n\n"}})
        for i in range(40))
    end = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
           "usage": {"output_tokens": 41}}
    return (_sse("message_start", start) + _sse("ping", {"type": "ping"}) + deltas
            + _sse("message_delta", end) + _sse("message_stop", {"type": "message_stop"}))


@pytest.mark.parametrize("size", [1, 2, 7, 64, 1000, 10**9])
def test_r2_4_streamed_usage_read_however_the_stream_is_cut(size: int) -> None:
    """R2.4: the usage and stop reason of a stream are read whatever its chunks, also
    when the text of other events names the usage events."""
    stream, sse = _stream(), SseUsage()
    for i in range(0, len(stream), size):
        sse.feed(stream[i:i + size])
    assert (sse.usage, sse.stop_reason, sse.message_id) == (
        Usage(10, 41, 3), "max_tokens", "msg_1")
