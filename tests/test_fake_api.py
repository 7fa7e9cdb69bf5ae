"""The fake Anthropic API itself, spoken to over plain HTTP (urllib, no SDK)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from agents.fake_api import FakeAnthropicServer, Fault, open_fake_api
from scheduler.budget import TokenCounter

BODY: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 20,
        "messages": [{"role": "user", "content": "Hello, fake Claude."}]}


def _post(server: FakeAnthropicServer, path: str, body: Any,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        server.base_url + path, data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def server() -> Any:
    with open_fake_api(input_ratio=1.5, output_tokens=12) as s:
        yield s


def test_r2_2_usage_differs_from_tiktoken_by_the_configured_ratio(
    server: FakeAnthropicServer,
) -> None:
    """R2.2/R2.3 test bed: input = round(tiktoken raw × input_ratio); output capped."""
    status, headers, raw = _post(server, "/v1/messages", BODY)
    assert status == 200
    msg = json.loads(raw)
    expected = round(TokenCounter().count_prompt(BODY["messages"]) * 1.5)
    assert msg["usage"]["input_tokens"] == expected
    assert msg["usage"]["output_tokens"] == 12
    assert msg["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 0,
                                              "ephemeral_1h_input_tokens": 0}
    assert headers["anthropic-ratelimit-requests-remaining"] == str(4000 - 1)
    assert headers["anthropic-ratelimit-input-tokens-reset"].endswith("Z")
    (rec,) = server.reported
    assert (rec.input_tokens, rec.output_tokens, rec.complete) == (expected, 12, True)


def test_streaming_sends_the_real_event_sequence(server: FakeAnthropicServer) -> None:
    status, headers, raw = _post(server, "/v1/messages", {**BODY, "stream": True})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    names = [line.split(": ", 1)[1] for line in raw.decode().splitlines()
             if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names.count("content_block_delta") == 12
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_cache_control_ttl_splits_writes_then_reads(server: FakeAnthropicServer) -> None:
    """R2.4 test bed: cache_control blocks are written once (5m or 1h), then read."""
    system = [{"type": "text", "text": "Shared context. " * 300,
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    first = json.loads(_post(server, "/v1/messages", {**BODY, "system": system})[2])["usage"]
    second = json.loads(_post(server, "/v1/messages", {**BODY, "system": system})[2])["usage"]
    assert first["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    assert first["cache_creation"]["ephemeral_5m_input_tokens"] == 0
    assert first["cache_creation_input_tokens"] == first["cache_creation"][
        "ephemeral_1h_input_tokens"]
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0


def test_count_tokens_matches_the_messages_input(server: FakeAnthropicServer) -> None:
    counted = json.loads(_post(server, "/v1/messages/count_tokens", BODY)[2])["input_tokens"]
    used = json.loads(_post(server, "/v1/messages", BODY)[2])["usage"]["input_tokens"]
    assert counted == used


def test_faults_through_the_control_api(server: FakeAnthropicServer) -> None:
    faults = [{"kind": "rate_limit", "retry_after": 0.25}, {"kind": "overloaded"},
              {"kind": "server_error"}, {"kind": "spend_limit"}]
    assert _post(server, "/_control/faults", faults)[0] == 200
    status, headers, raw = _post(server, "/v1/messages", BODY)
    assert (status, headers["retry-after"]) == (429, "0.25")
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    status, _, raw = _post(server, "/v1/messages", BODY)
    assert (status, json.loads(raw)["error"]["type"]) == (529, "overloaded_error")
    assert _post(server, "/v1/messages", BODY)[0] == 500
    status, headers, raw = _post(server, "/v1/messages", BODY)
    err = json.loads(raw)["error"]
    assert status == 429 and err["details"]["error_code"] == "enforced_spend_limit_reached"
    assert headers["x-should-retry"] == "false"
    assert _post(server, "/v1/messages", BODY)[0] == 200
    with urllib.request.urlopen(server.base_url + "/_control/reported", timeout=10) as resp:
        assert len(json.loads(resp.read())) == 1
    assert server.requests == 5


def test_fault_for_one_model_only(server: FakeAnthropicServer) -> None:
    server.inject(Fault("overloaded", model="claude-opus-4-7"))
    assert _post(server, "/v1/messages", BODY)[0] == 200
    assert _post(server, "/v1/messages", {**BODY, "model": "claude-opus-4-7"})[0] == 529


def test_dropped_stream_is_an_incomplete_body(server: FakeAnthropicServer) -> None:
    server.inject(Fault("drop_stream", after_events=1))
    with pytest.raises(Exception) as info:  # http.client.IncompleteRead or a reset
        _post(server, "/v1/messages", {**BODY, "stream": True})
    assert not isinstance(info.value, AssertionError)
    (rec,) = server.reported
    assert not rec.complete and rec.output_tokens == 1


def test_api_key_checked_when_configured() -> None:
    with open_fake_api(api_key="k-1") as s:
        assert _post(s, "/v1/messages", BODY)[0] == 401
        assert _post(s, "/v1/messages", BODY, {"x-api-key": "k-1"})[0] == 200
        assert _post(s, "/v1/messages", BODY, {"authorization": "Bearer k-1"})[0] == 200
