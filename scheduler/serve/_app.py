"""The ASGI application of ``vibe-engine serve``: the Messages API, governed (#21).

``POST /v1/messages`` (JSON or SSE), ``POST /v1/messages/count_tokens`` and
``GET /v1/models``, matched without their query string.  Each messages request is
authenticated by its client key, checked against the key's models, and made
through the run's gateway as a call of the key's task: admitted against the key's
and the shared budgets, leased, forwarded, settled from the upstream's usage.
:func:`create_app` needs only a running :class:`Served`, so the same app serves
over uvicorn or in-process through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from scheduler.core import (
    BudgetExceededError,
    FinishRequestedError,
    InvalidArgumentError,
    OverdraftDeniedError,
    Passthrough,
    ProviderError,
    StoreUnavailableError,
    get_logger,
)
from scheduler.serve._asyncio_watch import watch_later
from scheduler.serve._errors import (
    NO_RETRY,
    budget_refusal,
    error_json,
    error_response,
    finish_refusal,
)
from scheduler.serve._keys import TASK_HEADER, KeyEntry, presented_key, task_name_problem
from scheduler.serve._models import ModelMap
from scheduler.serve._runtime import (
    GroupEndedError,
    GroupLimitError,
    GroupUnavailableError,
    Served,
)
from scheduler.serve._upstream import UpstreamError, loads
from scheduler.tasks import TaskHandle

_log = get_logger("vibe_engine.serve")
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
#: Client headers forwarded upstream (the key is replaced by the server's own).
_FORWARDED = ("anthropic-version", "anthropic-beta")
#: Response headers the server sets itself (framing), never relayed from the upstream.
_OWN_HEADERS = frozenset(("transfer-encoding", "connection", "content-length"))

_Item = tuple[str, Any]
#: A JSON request still running this long (waiting for its lease, held) is watched for
#: its client leaving; one answered sooner never is.
_WATCH_AFTER_S = 0.05


class _Governed:
    """Runs one governed call and relays its answer as it arrives.

    A streaming request gets SSE ``ping`` events while it waits (a lease queue, a
    hold at a budget limit), then the upstream's events; an error once the stream
    started is sent as the API's ``error`` event.  A JSON request gets the upstream's
    body, or the error with its status.

    Beside the call, a watcher awaits the client's ``http.disconnect`` -- on asyncio
    only once the request has waited :data:`_WATCH_AFTER_S` (:mod:`._asyncio_watch`).
    It is never cancelled on the way out: ASGI's ``receive`` says ``http.disconnect``
    once the response was sent, so it ends by itself (a cancel costs anyio a task
    ``repr``).
    """

    def __init__(self, served: Served, entry: KeyEntry, handle: TaskHandle,
                 call: dict[str, Any], pt: Passthrough, stream: bool) -> None:
        # Response.__init__ is skipped: nothing of its header or body set-up is used
        self._served, self._entry, self._handle = served, entry, handle
        self._call, self._pt, self._stream = call, pt, stream
        self._sent = False

    def _on_send(self) -> None:
        self._sent = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._answer(scope, receive, send)
        finally:
            self._served.release(self._handle)  # a grouped task's idle time starts

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._pt.on_send = self._on_send
        relay = _Relay(send, self._stream, self._served.config.serve.ping_interval_s)
        if not self._stream:
            await self._whole(relay, receive)
            return
        tx, rx = anyio.create_memory_object_stream[_Item](math.inf)
        self._pt.on_status = lambda status, headers: tx.send_nowait(("status", headers))
        self._pt.on_bytes = lambda chunk: tx.send_nowait(("bytes", chunk))

        async def governed() -> None:
            refusal = await self._governed()
            tx.send_nowait(("done", None) if refusal is None else ("error", refusal))

        with tx, rx:
            async with anyio.create_task_group() as tg:
                tg.start_soon(governed)
                cancel = tg.cancel_scope
                stop = watch_later(_WATCH_AFTER_S, receive, lambda: self._leave(relay, cancel))
                if stop is None:
                    tg.start_soon(self._left, receive, relay, cancel)
                try:
                    await relay.run(rx)
                finally:
                    if stop is not None:
                        stop()

    async def _whole(self, relay: _Relay, receive: Receive) -> None:
        """A JSON answer goes out whole once the call ended, so the call runs in this
        task; the watch for the client leaving starts only if it waits (on asyncio,
        see :mod:`._asyncio_watch`), else runs beside it from the start."""
        head: list[Mapping[str, str]] = []
        body: list[bytes] = []
        self._pt.on_status = lambda status, headers: head.append(headers)
        self._pt.on_bytes = body.append
        cancel = anyio.CancelScope()
        stop = watch_later(_WATCH_AFTER_S, receive, lambda: self._leave(relay, cancel))
        if stop is None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._left, receive, relay, tg.cancel_scope)
                await self._answer_whole(relay, head, body)
            return
        with cancel:
            try:
                await self._answer_whole(relay, head, body)
            finally:
                stop()

    async def _answer_whole(self, relay: _Relay, head: list[Mapping[str, str]],
                            body: list[bytes]) -> None:
        refusal = await self._governed()
        if refusal is not None:
            await relay.fail(*refusal)
        else:
            await relay.whole(head[-1] if head else {}, b"".join(body))

    async def _left(self, receive: Receive, relay: _Relay, scope: anyio.CancelScope) -> None:
        """A client that leaves while its request waits (a lease queue, a hold) takes the
        request with it; once the request went upstream it is paid for, so it runs on
        and settles."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._leave(relay, scope)

    def _leave(self, relay: _Relay, scope: anyio.CancelScope) -> None:
        if not self._sent and not relay.finished:
            _log.info("serve_client_left", key=self._entry.name)
            scope.cancel()

    async def _governed(self) -> tuple[int, Mapping[str, str], bytes] | None:
        """The call; the refusal to answer when it failed, None when it was answered."""
        name, outcome = self._entry.name, "ok"
        try:
            await self._served.gateway.complete(self._handle, passthrough=self._pt, **self._call)
        except anyio.get_cancelled_exc_class():
            outcome = "left"  # the client left while its request waited
            raise
        except Exception as exc:  # every failure is answered; none takes the server down
            refusal = self._refusal(exc)
            outcome = "refused" if refusal[1] is NO_RETRY else "error"
            return refusal
        finally:
            # pt → this → pt would leave the request's objects (its parsed body too) to
            # the cycle collector instead of freeing them here
            self._pt.on_send = None
            self._served.requests[name] = self._served.requests.get(name, 0) + 1
            self._served.metrics.request(name, outcome)
        return None

    def _refusal(self, exc: Exception) -> tuple[int, Mapping[str, str], bytes]:
        name, hold = self._entry.name, self._entry.config.on_limit == "hold"
        if isinstance(exc, UpstreamError):
            return exc.status or 502, exc.headers, exc.body
        if isinstance(exc, BudgetExceededError):
            return 400, NO_RETRY, budget_refusal(name, exc, hold=hold)
        if isinstance(exc, OverdraftDeniedError) and isinstance(exc.__cause__,
                                                                BudgetExceededError):
            return 400, NO_RETRY, budget_refusal(name, exc.__cause__, hold=hold)
        if isinstance(exc, FinishRequestedError):
            return 400, NO_RETRY, finish_refusal(name, exc, self._served.config.serve.max_hold_s)
        if isinstance(exc, InvalidArgumentError):
            return 400, NO_RETRY, error_json("invalid_request_error", str(exc))
        if isinstance(exc, StoreUnavailableError):
            return 503, {}, error_json("api_error", f"vibe-engine: budget store unavailable: {exc}")
        if isinstance(exc, ProviderError):
            return 502, {}, error_json("api_error", f"vibe-engine: upstream failed: {exc}")
        _log.exception("serve_request_failed", key=name)
        return 500, {}, error_json("api_error", f"vibe-engine: {type(exc).__name__}: {exc}")


class _Relay:
    """Writes one response: a stream from the governed call's items (status, bytes,
    done, error), or a JSON answer whole."""

    def __init__(self, send: Send, stream: bool, ping_s: float) -> None:
        self._send, self._stream, self._ping_s = send, stream, ping_s
        self._started = False
        self._gone = False  # the client left: the call still settles, nothing is sent
        #: The response's last message went out (the client's leaving no longer matters).
        self.finished = False

    async def run(self, rx: MemoryObjectReceiveStream[_Item]) -> None:
        while True:
            item: _Item | None = None
            try:  # what already arrived needs no timeout (a cancel scope per item)
                item = rx.receive_nowait()
            except anyio.WouldBlock:
                with anyio.move_on_after(self._ping_s):
                    item = await rx.receive()
            if item is None:  # waiting (lease queue, held): keep the client's stream alive
                await self._start(200, _SSE_HEADERS)
                await self._write(_PING)
            elif await self._handle(item):
                return

    async def _handle(self, item: _Item) -> bool:
        """Relays one item of a stream; True once the response is complete."""
        kind, value = item
        if kind == "status":
            await self._start(200, value)
        elif kind == "bytes":
            await self._write(value)
        elif kind == "done":
            await self._start(200, _SSE_HEADERS)  # an answer without events
            await self._write(b"", more=False)
            return True
        else:
            await self.fail(*value)
            return True
        return False

    async def whole(self, headers: Mapping[str, str], body: bytes) -> None:
        await self._start(200, headers, len(body))
        await self._write(body, more=False)

    async def fail(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        if self._started:  # mid-stream: the API's own error event
            await self._write(b"event: error\ndata: " + body + b"\n\n", more=False)
            return
        await self._start(status, {**headers, "content-type": "application/json"}, len(body))
        await self._write(body, more=False)

    async def _start(self, status: int, headers: Mapping[str, str],
                     length: int | None = None) -> None:
        if self._started:
            return
        self._started = True
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
               if k.lower() not in _OWN_HEADERS]
        if length is not None:
            raw.append((b"content-length", str(length).encode()))
        await self._emit({"type": "http.response.start", "status": status, "headers": raw})

    async def _write(self, body: bytes, *, more: bool = True) -> None:
        self.finished = not more
        await self._emit({"type": "http.response.body", "body": body, "more_body": more})

    async def _emit(self, message: dict[str, Any]) -> None:
        if self._gone:
            return
        try:
            await self._send(message)
        except OSError:
            self._gone = True


class _Incoming:
    """What the handlers read of a request, taken from the ASGI scope in one pass: the
    few headers governance and forwarding need (first value of each), the query string,
    and the body on demand."""

    __slots__ = ("headers", "query", "receive")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # ASGI header names are lower case
            if name in _READ:  # an operator, not a call, for each of the client's headers
                wanted = _READ[name]
                if wanted not in headers:
                    headers[wanted] = value.decode("latin-1")
        self.headers = headers
        self.query = bytes(scope.get("query_string") or b"").decode("latin-1")
        self.receive = receive

    async def body(self, limit: int) -> bytes | None:
        """The request body, or None when the client left before sending all of it;
        :class:`_TooLarge` as soon as it is known to be over ``limit`` bytes, so a
        hostile client cannot make the server hold gigabytes."""
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooLarge
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            parts.append(chunk)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    def forwarded(self) -> dict[str, str]:
        return {h: self.headers[h] for h in _FORWARDED if h in self.headers}


class _TooLarge(Exception):
    """A request body over ``serve.max_request_bytes``."""


#: The request headers read, by their ASGI (lower-case, bytes) name.
_READ = {name.encode("latin-1"): name
         for name in ("x-api-key", "authorization", "content-length", TASK_HEADER, *_FORWARDED)}

_Answer = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeApp:
    """The handlers; one per :class:`Served`."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.models = ModelMap(served.config)

    def _key(self, request: _Incoming) -> KeyEntry | Response:
        entry = self.served.keys.find(presented_key(request.headers))
        if entry is None:
            return error_response("authentication_error", "invalid x-api-key")
        return entry

    async def _parsed(self, request: _Incoming) -> _Parsed | Response | None:
        """The key, the body (raw and parsed) and the routed model, or the error answer
        (None: the client left)."""
        entry = self._key(request)
        if isinstance(entry, Response):
            return entry
        limit = self.served.config.serve.max_request_bytes
        try:
            raw = await request.body(limit)
        except _TooLarge:
            return error_response("request_too_large",
                                  f"body: over serve.max_request_bytes = {limit:,} bytes",
                                  headers=NO_RETRY)
        if raw is None:
            return None
        try:
            body = loads(raw)
        except ValueError as exc:  # its reason: where the JSON breaks, a 5,000-digit int …
            return error_response("invalid_request_error",
                                  f"body: not a JSON object (not valid JSON: {exc})")
        except RecursionError:  # arrays or objects nested thousands deep
            return error_response("invalid_request_error", "body: JSON nested too deeply")
        if not isinstance(body, dict):
            return error_response("invalid_request_error", "body: not a JSON object")
        routed = self.models.resolve(entry.config, body.get("model"))
        if isinstance(routed, Response):
            return routed
        sent = None if routed is None else self.models.upstream_id(body["model"], routed)
        if sent is not None:
            body = {**body, "model": sent}
            raw = json.dumps(body).encode()
        return _Parsed(entry, raw, body, routed)

    async def messages(self, request: _Incoming) -> _Answer | None:
        parsed = await self._parsed(request)
        if not isinstance(parsed, _Parsed):
            return parsed
        entry, raw, body, routed = parsed
        group = request.headers.get(TASK_HEADER)
        problem = None if group is None else task_name_problem(group)
        if problem is not None:
            return error_response("invalid_request_error", f"{TASK_HEADER} header: {problem}",
                                  headers=NO_RETRY)
        try:
            call = _call_args(body, routed)
        except InvalidArgumentError as exc:
            return error_response("invalid_request_error", str(exc), headers=NO_RETRY)
        try:
            handle = (self.served.handle(entry) if group is None
                      else await self.served.group(entry, group))
        except GroupUnavailableError as exc:
            return error_response("api_error", f"vibe-engine: {exc}", status=503)
        except GroupLimitError as exc:  # retrying at once cannot help: a task idles out
            return error_response("rate_limit_error", f"vibe-engine: {exc}", headers=NO_RETRY)
        except GroupEndedError as exc:  # its budget is spent: retrying cannot help
            return error_response("invalid_request_error", f"vibe-engine: {exc}",
                                  headers=NO_RETRY)
        if handle is None:
            return error_response("overloaded_error", "vibe-engine serve is stopping",
                                  status=503)
        pt = Passthrough(body=body, raw=raw, model=routed or "", headers=request.forwarded(),
                         query=request.query)
        return _Governed(self.served, entry, handle, call, pt, call["stream"])

    async def count_tokens(self, request: _Incoming) -> _Answer | None:
        """Forwarded as is (the alias counts on the cheapest tier); not charged."""
        parsed = await self._parsed(request)
        if not isinstance(parsed, _Parsed):
            return parsed
        _, raw, body, routed = parsed
        if routed is None:
            raw = json.dumps({**body, "model": self.models.cheapest_id}).encode()
        query = request.query
        url = "/v1/messages/count_tokens" + (f"?{query}" if query else "")
        try:
            status, answer = await self.served.provider.post(url, raw, request.forwarded())
        except Exception as exc:  # an unreachable upstream is answered, not raised
            return error_response("api_error", f"vibe-engine: upstream failed: "
                                  f"{type(exc).__name__}", status=502)
        return Response(answer, status_code=status, media_type="application/json")

    async def models_list(self, request: _Incoming) -> _Answer | None:
        entry = self._key(request)
        if isinstance(entry, Response):
            return entry
        return Response(json.dumps(self.models.page(entry.config)),
                        media_type="application/json")


class _Parsed(NamedTuple):
    entry: KeyEntry
    raw: bytes
    body: dict[str, Any]
    routed: str | None


def _call_args(body: Mapping[str, Any], model: str | None) -> dict[str, Any]:
    """What the gateway estimates and admits from: only what governance needs is read."""
    max_tokens = body.get("max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidArgumentError("messages", messages, "must be a list of messages")
    system = body.get("system") or ""
    if isinstance(system, list):  # blocks: their text is what counts toward the estimate
        system = "\n".join(str(b.get("text", "")) for b in system if isinstance(b, Mapping))
    tools = body.get("tools") or []
    return {"messages": messages, "system": str(system), "tools": tools,
            "max_tokens": max_tokens, "model": model, "stream": bool(body.get("stream"))}


_Handler = Callable[[_Incoming], Awaitable["_Answer | None"]]


class _Router:
    """Three exact routes: a dict lookup, and no per-request URL or middleware objects."""

    def __init__(self, app: ServeApp) -> None:
        self._routes: dict[tuple[str, str], _Handler] = {
            ("POST", "/v1/messages"): app.messages,
            ("POST", "/v1/messages/count_tokens"): app.count_tokens,
            ("GET", "/v1/models"): app.models_list,
        }
        self._paths = {path for _, path in self._routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = str(scope["path"]).rstrip("/") or "/"
        handler = self._routes.get((scope["method"], path))
        response: _Answer | None
        if handler is None:
            response = (error_response("invalid_request_error",
                                       f"{scope['method']} is not allowed on {path}", status=405)
                        if path in self._paths else
                        error_response("not_found_error", f"no such endpoint: {path}"))
        else:
            try:
                response = await handler(_Incoming(scope, receive))
            except Exception as exc:  # fails this request only; the server keeps serving
                _log.exception("serve_request_failed", path=path)
                response = error_response("api_error", f"vibe-engine: {type(exc).__name__}")
        if response is not None:  # None: the client left before its request was whole
            await response(scope, receive, send)


def create_app(served: Served) -> ASGIApp:
    """The ASGI app over a running :class:`Served` (uvicorn, or ``httpx.ASGITransport``)."""
    return _Router(ServeApp(served))
