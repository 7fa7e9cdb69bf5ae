"""The fake Anthropic API itself, spoken to over plain HTTP (urllib, no SDK)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import anthropic
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


_GOOD_MESSAGES = BODY["messages"]
#: (what the body changes, the field the 400 names); ``None`` removes the field
BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"system": 5}, "system"),
    ({"system": [5]}, "system.0"),
    ({"system": [{"type": "text", "text": 5}]}, "system.0.text"),
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "20"}, "max_tokens"),
    ({"model": None}, "model"),
    ({"model": 7}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": None}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [5]}, "messages.0"),
    ({"messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [5]}]}, "messages.0.content.0"),
    ({"tools": {"name": "f"}}, "tools"),
    ({"tools": [{"name": 5, "input_schema": {}}]}, "tools.0.name"),
    ({"tools": [{"name": "f", "input_schema": 5}]}, "tools.0.input_schema"),
    ({"stream": "yes"}, "stream"),
    ({"temperature": 7}, "temperature"),
]


@pytest.mark.parametrize(("change", "field"), BAD_REQUESTS)
def test_r2_1_a_malformed_request_gets_the_apis_400_naming_the_field(
    server: FakeAnthropicServer, change: dict[str, Any], field: str,
) -> None:
    """R2.1 test bed: a request the real API refuses for its shape (``"system": 5`` was a
    plain-text 500 from a ``TypeError``) gets ``400 invalid_request_error`` naming the
    field, as JSON; nothing is reported as used, and the next good request is served."""
    body = {k: v for k, v in {**BODY, **change}.items() if v is not None}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        if path.endswith("count_tokens") and field in ("max_tokens", "stream", "temperature"):
            continue  # count_tokens takes neither
        status, headers, raw = _post(server, path, body)
        assert status == 400, (path, raw)
        assert headers["content-type"] == "application/json"
        error = json.loads(raw)
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert error["error"]["message"].startswith(f"{field}: "), error
    assert server.reported == []
    assert _post(server, "/v1/messages", BODY)[0] == 200


@pytest.mark.parametrize("raw", [b'{"max_tokens": NaN}', b'{"max_tokens": 1e400}',
                                 b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}"])
def test_r2_1_odd_json_gets_a_400_not_a_500(server: FakeAnthropicServer, raw: bytes) -> None:
    """R2.1 test bed: NaN, a number too large for a float, JSON nested 100,000 deep
    (a ``RecursionError``) and bytes that are not UTF-8 each get a JSON 400."""
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        req = urllib.request.Request(server.base_url + path, data=raw, method="POST",
                                     headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 400, path
        assert json.loads(refused.value.read())["error"]["type"] == "invalid_request_error"


def test_r2_1_the_sdk_sees_a_bad_request_error_for_a_bad_system(
    server: FakeAnthropicServer,
) -> None:
    """R2.1 test bed: through the real SDK, ``system=5`` is a ``BadRequestError`` (no
    retries: a 500 would have been retried twice)."""
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k")
    bad: Any = 5
    with pytest.raises(anthropic.BadRequestError, match="system: "):
        client.messages.create(model=BODY["model"], max_tokens=8, messages=_GOOD_MESSAGES,
                               system=bad)
    assert server.requests == 1
    client.close()


def test_r7_2_a_slow_fault_never_sleeps_a_negative_delay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """R7.2 (the fake API the tests and probes rely on): a ``slow`` fault whose deadline
    passes between the loop's check and the sleep it computes answered a plain-text 500
    (``anyio.sleep`` refuses a negative delay), which ``serve`` then relayed to clients
    under load."""
    import threading

    import anyio

    from agents.fake_api._model import FakeApiConfig, FakeState
    from agents.fake_api._server import _Api

    readings = iter([0.0, 0.05, 0.2, 0.2])  # end = 0.1; checked at 0.05; computed at 0.2
    api = _Api(FakeState(FakeApiConfig()), threading.Event())

    async def main() -> bool:
        monkeypatch.setattr(anyio, "current_time", lambda: next(readings))
        return await api._wait(0.1)

    assert anyio.run(main) is True


@pytest.mark.parametrize("model", ["claude-sonnet-4-5-20250929", "claude-3-5-haiku-20241022",
                                   "claude-haiku-4-5-20251001", "claude-sonnet-4-5"])
def test_r7_5_dated_snapshot_ids_are_served_as_the_real_api_does(
    server: FakeAnthropicServer, model: str,
) -> None:
    """R7.5 test bed: a client pinned to a snapshot sends the dated id, which the real
    API accepts; the fake served only the undated ids and answered those with a 404."""
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    msg = client.messages.create(model=model, max_tokens=5,
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.usage.output_tokens > 0
    for unknown in ("claude-sonnet-9-9-20250929", "claude-sonnet-4-5-2025", "gpt-4o"):
        with pytest.raises(anthropic.NotFoundError):
            client.messages.create(model=unknown, max_tokens=5,
                                   messages=[{"role": "user", "content": "hi"}])
