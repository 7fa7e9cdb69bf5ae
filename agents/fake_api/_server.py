"""A fake Anthropic Messages API over real HTTP on 127.0.0.1 (tests, demo, ``fake-api``).

A Starlette application served by uvicorn in a background thread (or in the
calling thread for ``vibe-engine fake-api``).  Endpoints, paths matched
without their query string as the API does (``/v1/messages?beta=true``):

* ``POST /v1/messages`` — JSON, or SSE streaming with the real event sequence;
  a model id it does not serve gets the API's 404 ``not_found_error``;
* ``POST /v1/messages/count_tokens``; ``GET /v1/models``, ``GET /v1/models/{id}``;
* a small control API — ``POST /_control/faults`` (a JSON list of faults),
  ``POST /_control/script`` (a JSON list of response bodies),
  ``GET /_control/reported``, ``POST /_control/reset``.

With a script loaded (:meth:`FakeAnthropicServer.load_script`, ``--script``)
each answer is the next scripted body, streamed or not.  Every response goes
out with ``TCP_NODELAY`` (asyncio sets it on each accepted socket; the
listening socket sets it too), so a small write never waits for a delayed ACK.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agents.fake_api._checks import request_problem
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
    scripted_output_tokens,
    usage_json,
)
from agents.fake_api._script import SERVED_MODELS, Event, models_page, stream_events


class _Dropped(Exception):
    """Raised inside a response to close the connection mid-body (a dropped stream)."""


def _without_usage(events: Iterable[Event]) -> Iterator[Event]:
    """``events`` with no ``usage`` in ``message_start`` nor ``message_delta``."""
    for name, data in events:
        if name == "message_start":
            data = {**data, "message": {k: v for k, v in data["message"].items()
                                        if k != "usage"}}
        elif name == "message_delta":
            data = {k: v for k, v in data.items() if k != "usage"}
        yield name, data


def _json(status: int, body: bytes | Any, headers: Mapping[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(raw, status, {"request-id": f"req_{uuid.uuid4().hex[:16]}", **(headers or {})},
                    media_type="application/json")


class _EventStream(Response):
    """An SSE body sent event by event; ``drop_after`` cuts it (closed, or an error event)."""

    def __init__(self, events: Iterable[Event], headers: Mapping[str, str], *,
                 drop_after: int | None, error: bool, on_cut: Callable[[str], None],
                 on_done: Callable[[], None]) -> None:
        super().__init__(None, 200, {"content-type": "text/event-stream",
                                     "cache-control": "no-cache", **headers})
        # no content-length: the body is chunked, of a length not known in advance
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._events, self._drop_after, self._error = events, drop_after, error
        self._on_cut, self._on_done = on_cut, on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        sent: list[str] = []  # the output streamed so far: billed if the stream is cut
        for i, (name, data) in enumerate(self._events):
            if self._drop_after is not None and i >= self._drop_after:
                self._on_cut("".join(sent))
                if not self._error:
                    raise _Dropped
                err = error_body("overloaded_error", "Overloaded").decode()
                await send({"type": "http.response.body", "more_body": True,
                            "body": f"event: error\ndata: {err}\n\n".encode()})
                break
            await send({"type": "http.response.body", "more_body": True,
                        "body": f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()})
            if name == "content_block_delta":
                delta = data["delta"]
                sent.append(str(delta.get("text") or delta.get("thinking")
                                or delta.get("partial_json") or ""))
        else:
            self._on_done()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Dropping(Response):
    """A plain answer whose connection closes after the headers and the first half of
    ``body`` (a connection dropped mid-body; no body: right after the headers)."""

    def __init__(self, body: bytes = b"") -> None:
        super().__init__(None, 200)
        self._whole = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(self._whole) or 1024).encode())]})
        if self._whole:
            half = self._whole[:len(self._whole) // 2]
            await send({"type": "http.response.body", "body": half, "more_body": True})
        raise _Dropped


def _reported(rid: str, model: str, stream: bool, usage: Mapping[str, Any],
              complete: bool = True) -> Reported:
    split = usage.get("cache_creation") or {}
    w1h = int(split.get("ephemeral_1h_input_tokens") or 0)
    w5m = int(split.get("ephemeral_5m_input_tokens") or 0)
    w5m += max(int(usage.get("cache_creation_input_tokens") or 0) - w5m - w1h, 0)
    return Reported(rid, model, stream, int(usage.get("input_tokens") or 0),
                    int(usage.get("output_tokens") or 0),
                    int(usage.get("cache_read_input_tokens") or 0), w5m, w1h, complete)


class _Api:
    """The request handlers, over one :class:`FakeState`."""

    def __init__(self, state: FakeState, stop: threading.Event) -> None:
        self.state, self.stop = state, stop

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
            Route("/_control/faults", self.faults, methods=["POST"]),
            Route("/_control/script", self.script, methods=["POST"]),
            Route("/_control/reported", self.reported, methods=["GET"]),
            Route("/_control/reset", self.reset, methods=["POST"]),
        ])

    # plumbing --------------------------------------------------------------------------
    def _unauthorized(self, request: Request) -> Response | None:
        key = self.state.config.api_key
        bearer = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        if key is None or key in (request.headers.get("x-api-key"), bearer):
            return None
        return _json(401, error_body("authentication_error", "invalid API key"))

    async def _body(self, request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"{}")
        except (ValueError, RecursionError):  # not JSON, or nested thousands deep
            return None

    def _unknown_model(self, model: str) -> Response | None:
        if self.state.serves(model):
            return None
        return _json(404, error_body("not_found_error", f"model: {model}"))

    async def _wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; False when the server is stopping meanwhile."""
        end = anyio.current_time() + seconds
        while anyio.current_time() < end:
            if self.stop.is_set():
                return False
            # the clock moved on since the check: never a negative delay (a 500)
            await anyio.sleep(max(0.0, min(0.05, end - anyio.current_time())))
        return not self.stop.is_set()

    # the Messages API ------------------------------------------------------------------
    async def messages(self, request: Request) -> Response:
        body = await self._body(request)
        if body is None or not isinstance(body, dict):
            return _json(400, error_body("invalid_request_error", "body is not a JSON object"))
        refused = self._unauthorized(request)
        if refused is not None:  # rejected before any model work: not counted
            return refused
        with self.state.lock:
            self.state.requests += 1
            self.state.last_body = body
            if self.state.scripted:
                self.state.scripted_bodies.append(body)
        problem = request_problem(body)
        if problem is not None:
            return _json(400, error_body("invalid_request_error", problem))
        model = str(body.get("model"))
        refused = self._unknown_model(model)
        if refused is not None:
            return refused
        fault = self.state.take_fault(model)
        if fault is not None and fault.kind == "slow" and not await self._wait(fault.delay_s):
            return _Dropping()
        if fault is not None and fault.kind in FAULT_STATUS:
            return self._fault_status(fault)
        try:
            scripted = self.state.next_scripted()
        except LookupError as exc:
            return _json(400, error_body("invalid_request_error", str(exc)))
        plan = self.state.plan(body)
        self.state.admit(plan, plan.max_tokens, now_utc())
        message = self._message(model, plan, scripted)
        cut = fault.kind if fault and fault.kind in ("drop_stream", "stream_error") else None
        bare = fault is not None and fault.kind == "no_usage"
        if body.get("stream"):
            return self._stream(message, plan, fault.after_events if fault and cut else None,
                                error=cut == "stream_error", bare=bare)
        if cut == "stream_error":
            return self._fault_status(Fault("overloaded"))
        if cut == "drop_stream":
            return _Dropping()
        cut_body = fault is not None and fault.kind == "drop_body"
        rec = _reported(message["id"], model, False, message["usage"], not cut_body)
        self.state.record(rec, plan.max_tokens)  # billed: a body cut short was made all the same
        if cut_body:
            return _Dropping(json.dumps(message).encode())
        if bare:  # billed (recorded above), not reported
            message = {k: v for k, v in message.items() if k != "usage"}
        return _json(200, message, self.state.rate_limit_headers(now_utc()))

    def _message(self, model: str, plan: Plan, scripted: Mapping[str, Any] | None) -> Any:
        """The whole answer: the next scripted body, or the generated one."""
        if scripted is None:
            text = "".join(answer_text(plan.output_tokens))
            content: list[Any] = [{"type": "text", "text": text}]
            stop, out, given = "end_turn", plan.output_tokens, {}
        else:
            content = list(scripted["content"])
            stop = scripted.get("stop_reason", "end_turn")
            given = dict(scripted.get("usage") or {})
            out = int(given.get("output_tokens")
                      or scripted_output_tokens(self.state.counter, content))
        return {
            "id": (scripted or {}).get("id") or f"msg_{uuid.uuid4().hex[:20]}",
            "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {**usage_json(plan, output_tokens=out), **given},
        }

    def _fault_status(self, fault: Fault) -> Response:
        status, kind = FAULT_STATUS[fault.kind]
        headers = self.state.rate_limit_headers(now_utc())
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
        return _json(status, body, headers)

    def _stream(self, message: Mapping[str, Any], plan: Plan, drop_after: int | None,
                *, error: bool, bare: bool = False) -> Response:
        state, usage = self.state, message["usage"]
        rid, model = str(message["id"]), str(message["model"])

        def cut(streamed: str) -> None:  # billed: the input, and the output streamed so far
            out = max(state.counter.count_text(streamed), 1)  # message_start's 1 at least
            seen = _reported(rid, model, True, {**usage, "output_tokens": out}, complete=False)
            state.record(seen, plan.max_tokens)

        def done() -> None:
            state.record(_reported(rid, model, True, usage), plan.max_tokens)

        headers = {"request-id": f"req_{uuid.uuid4().hex[:16]}",
                   **state.rate_limit_headers(now_utc())}
        events = stream_events(message)
        return _EventStream(_without_usage(events) if bare else events, headers,
                            drop_after=drop_after, error=error, on_cut=cut, on_done=done)

    async def count_tokens(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return _json(400, error_body("invalid_request_error", "body is not a JSON object"))
        refused = self._unauthorized(request)
        problem = None if refused else request_problem(body, counting=True)
        if problem is not None:
            return _json(400, error_body("invalid_request_error", problem))
        refused = refused or self._unknown_model(str(body.get("model")))
        if refused is not None:
            return refused
        state = self.state
        n, cached = state.input_count(body)
        n += sum(round(state.counter.count_text(t) * state.config.input_ratio) for t, _ in cached)
        with state.lock:
            state.count_requests += 1
        return _json(200, {"input_tokens": n})

    async def models(self, request: Request) -> Response:
        return self._unauthorized(request) or _json(200, models_page(self._served()))

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        refused = self._unauthorized(request) or self._unknown_model(model_id)
        if refused is not None:
            return refused
        return _json(200, models_page((model_id,))["data"][0])

    def _served(self) -> tuple[str, ...]:
        return self.state.config.models or SERVED_MODELS

    # control ---------------------------------------------------------------------------
    async def faults(self, request: Request) -> Response:
        body = await self._body(request) or []
        with self.state.lock:
            self.state.faults.extend(Fault(**f) for f in body)
        return _json(200, {})

    async def script(self, request: Request) -> Response:
        body = await self._body(request) or []
        with self.state.lock:
            self.state.script.extend(body)
            self.state.scripted = True
        return _json(200, {})

    async def reported(self, request: Request) -> Response:
        with self.state.lock:
            rows = [asdict(r) for r in self.state.reported]
        return _json(200, rows)

    async def reset(self, request: Request) -> Response:
        with self.state.lock:
            self.state.reported.clear()
            self.state.faults.clear()
            self.state.scripted_bodies.clear()
        return _json(200, {})


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit it on Linux; asyncio also sets it on each one
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)  # 100+ agents connect at once
    except OSError:
        sock.close()  # a busy port: refused in one line, no socket left open
        raise
    sock.setblocking(False)
    return sock


class FakeAnthropicServer:
    """Handle on a running fake API: its URL, fault injection, scripts, what it reported."""

    def __init__(self, config: FakeApiConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, script: Iterable[Mapping[str, Any]] | None = None) -> None:
        self.state = FakeState(config or FakeApiConfig())
        if script is not None:
            self.load_script(script)
        self._stop = threading.Event()
        self._sock = _listen(host, port)
        app = _Api(self.state, self._stop).app()
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_config=None, log_level="critical", access_log=False, lifespan="off",
            timeout_graceful_shutdown=1,
        ))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAnthropicServer:
        self._thread = threading.Thread(target=self._server.run, args=([self._sock],),
                                        name="fake-anthropic-api", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._stop.wait(0.005)
        if not self._server.started:
            raise RuntimeError("the fake API did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.should_exit = True
        self._server.force_exit = True  # do not wait for idle keep-alive connections
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (``vibe-engine fake-api``)."""
        try:
            self._server.run([self._sock])
        finally:
            self._sock.close()

    # control ---------------------------------------------------------------------------
    def inject(self, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` matching requests (in order)."""
        with self.state.lock:
            self.state.faults.extend([fault] * times)

    def load_script(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """Answer the next requests with these response bodies, in order; once they
        are used up a request gets a 400 saying so."""
        with self.state.lock:
            self.state.script.extend(dict(b) for b in bodies)
            self.state.scripted = True

    def configure(self, **changes: Any) -> None:
        """Change the behaviour (``input_ratio``, limits, ``models`` …) of later requests."""
        with self.state.lock:
            self.state.config = replace(self.state.config, **changes)

    @property
    def reported(self) -> list[Reported]:
        """Every usage the server reported, in order (a copy)."""
        with self.state.lock:
            return list(self.state.reported)

    @property
    def requests(self) -> int:
        """``POST /v1/messages`` requests received, faults and refusals included."""
        with self.state.lock:
            return self.state.requests

    @property
    def last_request(self) -> dict[str, Any] | None:
        """The body of the last ``POST /v1/messages`` received, as sent."""
        with self.state.lock:
            return self.state.last_body

    @property
    def scripted_requests(self) -> list[dict[str, Any]]:
        """The bodies of the ``POST /v1/messages`` requests received while a script was
        loaded, in order, as sent (a copy; a server without a script keeps none)."""
        with self.state.lock:
            return list(self.state.scripted_bodies)

    @property
    def script_left(self) -> int:
        """Scripted responses not served yet."""
        with self.state.lock:
            return len(self.state.script)

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
                  script: Iterable[Mapping[str, Any]] | None = None,
                  **config_fields: Any) -> Iterator[FakeAnthropicServer]:
    """Run a fake API in a background thread for the duration of the block."""
    cfg = replace(config or FakeApiConfig(), **config_fields)
    server = FakeAnthropicServer(cfg, port=port, script=script).start()
    try:
        yield server
    finally:
        server.stop()
