"""A fake Anthropic Messages API over real HTTP on 127.0.0.1 (tests, demo, ``fake-api``).

Standard library only: a :class:`~http.server.ThreadingHTTPServer` in a
background thread.  Endpoints: ``POST /v1/messages`` (JSON or SSE streaming
with the real event sequence), ``POST /v1/messages/count_tokens``, and a
small control API — ``POST /_control/faults`` (a JSON list of faults),
``GET /_control/reported``, ``POST /_control/reset``.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agents.fake_api._model import (
    FAULT_STATUS,
    FakeApiConfig,
    FakeState,
    Fault,
    Plan,
    Reported,
    answer_text,
    error_body,
    now_utc,
    usage_json,
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # 100+ agents connect at once; the default backlog is 5

    def __init__(self, addr: tuple[str, int], state: FakeState, stop: threading.Event) -> None:
        super().__init__(addr, _Handler)
        self.state = state
        self.stop = stop


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None  # quiet: the fake API never writes to stderr

    # plumbing --------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _read_json(self) -> Any:
        n = int(self.headers.get("content-length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _authorized(self) -> bool:
        key = self.server.state.config.api_key
        bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        if key is None or key in (self.headers.get("x-api-key"), bearer):
            return True
        self._send(401, error_body("authentication_error", "invalid API key"))
        return False

    # routes ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path == "/_control/reported":
            with self.server.state.lock:
                rows = [asdict(r) for r in self.server.state.reported]
            self._send(200, json.dumps(rows).encode())
        else:
            self._send(404, error_body("not_found_error", f"no route {self.path}"))

    def do_POST(self) -> None:
        body = self._read_json()
        if self.path == "/v1/messages":
            if self._authorized():
                self._messages(body)
        elif self.path == "/v1/messages/count_tokens":
            if self._authorized():
                self._count_tokens(body)
        elif self.path == "/_control/faults":
            with self.server.state.lock:
                self.server.state.faults.extend(Fault(**f) for f in body)
            self._send(200, b"{}")
        elif self.path == "/_control/reset":
            with self.server.state.lock:
                self.server.state.reported.clear()
                self.server.state.faults.clear()
            self._send(200, b"{}")
        else:
            self._send(404, error_body("not_found_error", f"no route {self.path}"))

    def _count_tokens(self, body: Any) -> None:
        state = self.server.state
        n, cached = state.input_count(body)
        n += sum(round(state.counter.count_text(t) * state.config.input_ratio) for t, _ in cached)
        with state.lock:
            state.count_requests += 1
        self._send(200, json.dumps({"input_tokens": n}).encode())

    def _messages(self, body: Any) -> None:
        state = self.server.state
        model = str(body.get("model", ""))
        fault = state.take_fault(model)
        if fault is not None and fault.kind == "slow" and self.server.stop.wait(fault.delay_s):
            return self._drop()
        if fault is not None and fault.kind in FAULT_STATUS:
            return self._fault_status(fault)
        plan = state.plan(body)
        state.admit(plan, plan.max_tokens, now_utc())
        rid = f"msg_{uuid.uuid4().hex[:20]}"
        cut = fault.kind if fault and fault.kind in ("drop_stream", "stream_error") else None
        if body.get("stream"):
            after = fault.after_events if fault and cut else None
            return self._stream(rid, model, plan, after, error=cut == "stream_error")
        if cut == "stream_error":
            return self._fault_status(Fault("overloaded"))
        if cut == "drop_stream":
            return self._drop()
        self._plain(rid, model, plan)

    def _fault_status(self, fault: Fault) -> None:
        status, kind = FAULT_STATUS[fault.kind]
        headers = self.server.state.rate_limit_headers(now_utc())
        if fault.kind == "rate_limit":
            headers["retry-after"] = f"{fault.retry_after:g}"
            headers["anthropic-ratelimit-requests-remaining"] = "0"
            headers["anthropic-ratelimit-input-tokens-remaining"] = "0"
            body = error_body(kind, "Number of request tokens has exceeded your rate limit.")
        elif fault.kind == "spend_limit":
            body = error_body(kind, "You have reached your specified API usage limits.",
                              "enforced_spend_limit_reached")
        else:
            body = error_body(kind, "Overloaded" if status == 529 else "Internal server error")
        headers["x-should-retry"] = "false" if fault.kind == "spend_limit" else "true"
        self._send(status, body, headers)

    def _plain(self, rid: str, model: str, plan: Plan) -> None:
        state = self.server.state
        message = {
            "id": rid, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "".join(answer_text(plan.output_tokens))}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": usage_json(plan, output_tokens=plan.output_tokens),
        }
        state.record(Reported(rid, model, False, plan.input_tokens, plan.output_tokens,
                              plan.cache_read, plan.cache_5m, plan.cache_1h), plan.max_tokens)
        self._send(200, json.dumps(message).encode(), state.rate_limit_headers(now_utc()))

    def _events(self, rid: str, model: str, plan: Plan) -> Iterator[tuple[str, dict[str, Any]]]:
        """The real event sequence of a streamed message."""
        start: dict[str, Any] = {"id": rid, "type": "message", "role": "assistant", "model": model,
                 "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": usage_json(plan, output_tokens=1)}
        yield "message_start", {"type": "message_start", "message": start}
        yield "content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}
        yield "ping", {"type": "ping"}
        for piece in answer_text(plan.output_tokens):
            yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": piece}}
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        delta_usage = usage_json(plan, output_tokens=plan.output_tokens)
        delta_usage.pop("cache_creation")
        delta_usage.pop("service_tier")
        yield "message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": delta_usage}
        yield "message_stop", {"type": "message_stop"}

    def _stream(self, rid: str, model: str, plan: Plan, drop_after: int | None,
                *, error: bool = False) -> None:
        state = self.server.state
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in state.rate_limit_headers(now_utc()).items():
            self.send_header(k, v)
        self.end_headers()
        for i, (name, data) in enumerate(self._events(rid, model, plan)):
            if drop_after is not None and i >= drop_after:
                # what the client saw: message_start's usage (input, cache, 1 output token)
                seen = Reported(rid, model, True, plan.input_tokens, 1, plan.cache_read,
                                plan.cache_5m, plan.cache_1h, complete=False)
                state.record(seen, plan.max_tokens)
                if not error:
                    return self._drop()
                err = error_body("overloaded_error", "Overloaded").decode()
                self._chunk(f"event: error\ndata: {err}\n\n".encode())
                self._chunk(b"")
                return None
            self._chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self._chunk(b"")
        state.record(Reported(rid, model, True, plan.input_tokens, plan.output_tokens,
                              plan.cache_read, plan.cache_5m, plan.cache_1h), plan.max_tokens)


class FakeAnthropicServer:
    """Handle on a running fake API: its URL, fault injection, and what it reported."""

    def __init__(self, config: FakeApiConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.state = FakeState(config or FakeApiConfig())
        self._stop = threading.Event()
        self._httpd = _Server((host, port), self.state, self._stop)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAnthropicServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-anthropic-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (``python -m agents.fake_api``)."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._httpd.server_close()

    # control ---------------------------------------------------------------------------
    def inject(self, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` matching requests (in order)."""
        with self.state.lock:
            self.state.faults.extend([fault] * times)

    def configure(self, **changes: Any) -> None:
        """Change the behaviour (``input_ratio``, limits …) of later requests."""
        with self.state.lock:
            self.state.config = replace(self.state.config, **changes)

    @property
    def reported(self) -> list[Reported]:
        """Every usage the server reported, in order (a copy)."""
        with self.state.lock:
            return list(self.state.reported)

    @property
    def requests(self) -> int:
        """``POST /v1/messages`` requests received, faults included."""
        with self.state.lock:
            return self.state.requests

    def reported_totals(self) -> dict[str, int]:
        """Sums of the reported usage fields."""
        rows = self.reported
        return {
            "input_tokens": sum(r.input_tokens for r in rows),
            "output_tokens": sum(r.output_tokens for r in rows),
            "cache_read_input_tokens": sum(r.cache_read_input_tokens for r in rows),
            "cache_creation_5m": sum(r.cache_creation_5m for r in rows),
            "cache_creation_1h": sum(r.cache_creation_1h for r in rows),
        }


@contextmanager
def open_fake_api(config: FakeApiConfig | None = None, *, port: int = 0,
                  **config_fields: Any) -> Iterator[FakeAnthropicServer]:
    """Run a fake API in a background thread for the duration of the block."""
    cfg = replace(config or FakeApiConfig(), **config_fields)
    server = FakeAnthropicServer(cfg, port=port).start()
    try:
        yield server
    finally:
        server.stop()
