"""The upstream Messages API as a :class:`~scheduler.core.Provider` (the gateway's call step).

A call that carries a :class:`~scheduler.core.Passthrough` is forwarded as the client
sent it: the body bytes unchanged (re-encoded only when the gateway routed it to
another model), the client's ``anthropic-version``/``anthropic-beta`` headers and
query string, and the server's own API key.  The answer goes back through the
pass-through's sinks as it arrives — SSE events are relayed chunk by chunk, whatever
their type — while only the usage (``message_start`` and ``message_delta``, cache
tokens included) is read, for exact settlement.  Upstream errors keep their status,
headers and body so the client gets them as the API sent them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from scheduler.config import api_key_problem, base_url_problem
from scheduler.core import (
    Completion,
    CompletionRequest,
    ConfigError,
    OverloadedError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    Usage,
)
from scheduler.net import HttpError, HttpTimeout
from scheduler.serve._http import HttpClient
from scheduler.serve._proxied import ProxiedClient, proxied

#: Response headers worth relaying to the client (rate limits, ids); hop-by-hop
#: and length headers are the server's own business.
_RELAYED = ("request-id", "anthropic-organization-id", "retry-after", "x-should-retry")
_API_VERSION = "2023-06-01"
#: Distinct (version, beta) header pairs kept (clients send few).
_MAX_AUTH = 64


class UpstreamError(ProviderError):
    """The upstream answered with an error: its status, headers and body, to relay."""

    def __init__(self, model: str, status: int, body: bytes,
                 headers: Mapping[str, str] | None = None) -> None:
        ProviderError.__init__(self, model, f"upstream answered {status}", status=status)
        self.body = body
        self.headers = dict(headers or {})


class UpstreamOverloadedError(UpstreamError, OverloadedError):
    """529 (or 503): degraded; routed requests fall back (R6.1)."""


class UpstreamRateLimitedError(UpstreamError, RateLimitedError):
    """429 from the upstream."""

    def __init__(self, model: str, status: int, body: bytes,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(model, status, body, headers)
        after = (headers or {}).get("retry-after")
        try:
            self.retry_after: float | None = float(after) if after else None
        except ValueError:
            self.retry_after = None


class UpstreamTimeoutError(UpstreamError, ProviderTimeoutError):
    """The upstream did not answer in time (relayed as a 504 ``timeout_error``)."""


def error_body(kind: str, message: str) -> bytes:
    """The Messages API's error shape."""
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


#: The API's error type of a status, for an upstream error body not in the API's shape.
_KIND_OF = {400: "invalid_request_error", 401: "authentication_error",
            403: "permission_error", 404: "not_found_error", 413: "request_too_large",
            429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def api_shaped(status: int, body: bytes) -> bytes:
    """An upstream error body a client can parse: the API's own JSON as it came; anything
    else (a proxy's HTML page, a plain-text 500) in the API's error shape, its text kept."""
    try:
        if isinstance(json.loads(body), dict):
            return body
    except ValueError:  # not JSON (nor UTF-8)
        pass
    text = " ".join(body.decode("utf-8", "replace").split())[:200]
    return error_body(_KIND_OF.get(status, "api_error"),
                      f"the upstream API answered {status}: {text or '(no body)'}")


def status_error(model: str, status: int, body: bytes,
                 headers: Mapping[str, str]) -> UpstreamError:
    relayed = {k: v for k, v in headers.items() if k.lower() in _RELAYED}
    body = api_shaped(status, body)
    if status in (503, 529):
        return UpstreamOverloadedError(model, status, body, relayed)
    if status == 429:
        return UpstreamRateLimitedError(model, status, body, relayed)
    return UpstreamError(model, status, body, relayed)


def usage_of(u: Mapping[str, Any] | None, base: Usage | None = None) -> Usage:
    """A ``usage`` object of the API → :class:`Usage`; fields it lacks keep ``base``'s
    (a ``message_delta`` repeats only what changed; its counts are cumulative)."""
    cur = base or _NO_USAGE
    if not isinstance(u, Mapping):
        return cur
    # each field read once, without a loop: every answer passes here.  A count that is
    # no count (NaN, infinite, negative: an upstream that is not the API) is absent
    prompt, completion = u.get("input_tokens"), u.get("output_tokens")
    read, written = u.get("cache_read_input_tokens"), u.get("cache_creation_input_tokens")
    split = u.get("cache_creation")
    w1h = (_count(split.get("ephemeral_1h_input_tokens"), 0) if isinstance(split, Mapping)
           else cur.cache_write_1h_tokens)
    writes = _count(written, cur.cache_write_tokens)
    # without a split every write is a 5-minute write, the API's default TTL
    return Usage(_count(prompt, cur.prompt_tokens), _count(completion, cur.completion_tokens),
                 _count(read, cur.cache_read_tokens), max(writes - w1h, 0), w1h)


def _count(value: object, absent: int) -> int:
    """A token count of the API's usage, or ``absent`` when ``value`` is none."""
    if type(value) is int and 0 <= value <= _MAX_COUNT:
        return value
    if isinstance(value, float) and 0 <= value <= _MAX_COUNT:  # NaN fails both tests
        return int(value)
    return absent


#: More tokens than one answer can hold (2^53: past it a float loses whole tokens).
_MAX_COUNT = 2**53


_NO_USAGE = Usage()


def loads(raw: bytes) -> Any:
    """JSON bytes → Python: UTF-8 (what the API sends and takes) decoded directly, the
    other encodings ``json.loads`` detects (UTF-16/32, a BOM) through it."""
    try:
        return _decode(raw.decode())
    except ValueError:  # not UTF-8, or a BOM: json.loads decides (and raises ValueError)
        return json.loads(raw)


_decode = json.JSONDecoder().decode


def usage_reported(u: object, *needed: str) -> bool:
    """Whether ``u`` is a usage to charge by: the ``needed`` counts given as counts (an
    answer without one, or with nonsense there, is charged at the call's estimate)."""
    return isinstance(u, Mapping) and all(_count(u.get(n), -1) >= 0 for n in needed) and all(
        u.get(n) is None or _count(u.get(n), -1) >= 0 for n in _COUNTS)


_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
           "cache_creation_input_tokens")


#: How an ``error`` event of a stream starts.
_ERROR = (b"event: error", b"event:error")


class SseUsage:
    """Reads the usage and stop reason out of relayed SSE bytes, event by event.
    ``reported``: a ``message_delta`` gave the output's count and the input's was given,
    or an ``error`` event ended the answer (what was reported before it is what it used)."""

    def __init__(self) -> None:
        self._buf = b""
        self.usage: Usage | None = None
        self.stop_reason = "end_turn"
        self.message_id = ""
        self._input = self._output = self._failed = False

    @property
    def reported(self) -> bool:
        return self._failed or (self._input and self._output)

    def feed(self, chunk: bytes) -> None:
        buf = self._buf + chunk if self._buf else chunk
        start = 0  # the events are found in place; only what is left over is copied
        while (end := buf.find(b"\n\n", start)) >= 0:
            # only message_start and message_delta carry usage: the many other events (a
            # content_block_delta per few tokens) are only relayed, never split into lines
            if buf.find(b"message_", start, end) >= 0 or buf.startswith(_ERROR, start):
                self._event(buf[start:end].replace(b"\r\n", b"\n"))
            start = end + 2
        self._buf = buf[start:]

    def _event(self, block: bytes) -> None:
        kind, data = b"", b""
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                kind = line[6:].strip()
            elif line.startswith(b"data:"):
                data += line[5:].strip()
        if kind == b"error":
            self._failed = True
        if kind not in (b"message_start", b"message_delta") or not data:
            return  # every other event is only relayed
        try:
            event = loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(event, dict):
            return  # relayed as it came; only the API's own events are read
        if kind == b"message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self.message_id = str(message.get("id") or "")
                self.usage = usage_of(message.get("usage"))
                self._input = usage_reported(message.get("usage"), "input_tokens")
        else:
            u = event.get("usage")
            self.usage = usage_of(u, self.usage)
            self._input = self._input or usage_reported(u, "input_tokens")
            self._output = self._output or usage_reported(u, "output_tokens")
            delta = event.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if reason:
                self.stop_reason = str(reason)


class _Answer(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...

    def chunks(self) -> AsyncIterator[bytes]: ...
    async def read(self) -> bytes: ...
    async def aclose(self) -> None: ...


class _Http(Protocol):
    async def send(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                   body: bytes) -> _Answer: ...
    async def aclose(self) -> None: ...


class UpstreamProvider:
    """Forwards governed calls to the upstream Messages API over kept-alive connections
    (:mod:`._http`; through httpx when the environment names a proxy for it)."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 600.0) -> None:
        # as `vibe-engine serve` checks at start: built from Python, a bad value would
        # otherwise fail every forwarded call (the key is never repeated)
        problem = base_url_problem(base_url)
        if problem is not None:
            raise ConfigError("serve.upstream_base_url", base_url, problem)
        problem = api_key_problem(api_key) if api_key else None
        if problem is not None:
            raise ConfigError("api_key", "<redacted>", problem)
        self._url = base_url.rstrip("/")
        #: the headers every upstream request carries, before the client's own
        self._fixed = (("x-api-key", api_key), ("content-type", "application/json"),
                       ("accept-encoding", "identity"), ("user-agent", "vibe-engine-serve"))
        self._auth: dict[tuple[str, str | None], tuple[tuple[str, str], ...]] = {}
        connect_s = min(timeout_s, 10.0)
        self._http: _Http = (ProxiedClient if proxied(self._url) else HttpClient)(
            self._url, timeout_s=timeout_s, connect_s=connect_s)

    def __repr__(self) -> str:  # the key never shows, not even in a traceback's locals
        return f"UpstreamProvider({self._url!r})"

    def auth_headers(self, client_headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The headers an upstream request carries: the server's key, the client's
        API version and beta flags (the same tuple for the same two, so the client
        finds the request head it already built)."""
        version = client_headers.get("anthropic-version") or _API_VERSION
        beta = client_headers.get("anthropic-beta")
        found = self._auth.get((version, beta))
        if found is None:
            extra = (("anthropic-version", version),) + ((("anthropic-beta", beta),) if beta
                                                         else ())
            found = (*self._fixed, *extra)
            if len(self._auth) >= _MAX_AUTH:
                self._auth.clear()
            self._auth[version, beta] = found
        return found

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(self, path: str, raw: bytes, client_headers: Mapping[str, str]
                   ) -> tuple[int, bytes]:
        """A plain POST (count_tokens): the upstream's status and body."""
        resp = await self._http.send("POST", path, self.auth_headers(client_headers), raw)
        try:
            return resp.status, await resp.read()
        finally:
            await resp.aclose()

    async def complete(self, request: CompletionRequest) -> Completion:
        pt = request.passthrough
        client_headers: Mapping[str, str] = {}
        if pt is None:  # the runtime's own calls (health-check pings)
            body: Mapping[str, Any] = _body_of(request)
            raw, query = json.dumps(body).encode(), ""
        else:
            body, raw, client_headers, query = pt.body, pt.raw, pt.headers, pt.query
            if pt.model != request.model:  # routed, or fell back: the one field we change
                body = {**body, "model": request.model_id}
                raw = json.dumps(body).encode()
        target = "/v1/messages" + (f"?{query}" if query else "")
        if pt is not None and pt.on_send is not None:
            pt.on_send()
        try:
            resp = await self._http.send("POST", target, self.auth_headers(client_headers), raw)
        except ValueError as exc:
            raise UpstreamError(request.model, 400, error_body(
                "invalid_request_error", str(exc))) from None
        except HttpTimeout:
            raise UpstreamTimeoutError(request.model, 504, error_body(
                "timeout_error", "the upstream API did not answer in time")) from None
        except HttpError as exc:
            raise UpstreamOverloadedError(request.model, 529, error_body(
                "overloaded_error", f"upstream unreachable: {exc}")) from None
        try:
            return await self._answer(request, resp, bool(body.get("stream")))
        finally:
            await resp.aclose()

    async def _answer(self, request: CompletionRequest, resp: _Answer,
                      stream: bool) -> Completion:
        pt = request.passthrough
        if resp.status != 200:
            raise status_error(request.model, resp.status, await self._body(request, resp),
                               resp.headers)
        if pt is not None and pt.on_status is not None:
            pt.on_status(200, {k: v for k, v in resp.headers.items()
                               if k in _RELAYED or k.startswith("anthropic-")
                               or k == "content-type"})
        sink = pt.on_bytes if pt is not None else None
        if not stream:
            data = await self._body(request, resp, answered=True)
            message = _message(request.model, data)
            if sink is not None:
                sink(data)
            u = message.get("usage")
            missing = not usage_reported(u, "input_tokens", "output_tokens")
            return Completion("", _NO_USAGE if missing else usage_of(u), request.model,
                              stop_reason=str(message.get("stop_reason") or "end_turn"),
                              id=str(message.get("id") or ""), usage_missing=missing)
        sse = SseUsage()
        try:
            async for chunk in resp.chunks():
                if sink is not None:
                    sink(chunk)
                sse.feed(chunk)
        except HttpError as exc:  # dropped mid-stream: paid all the same
            err = UpstreamOverloadedError(request.model, 529, error_body(
                "overloaded_error", f"upstream stream dropped: {exc}"))
            if sse.reported or sse.usage is None:  # its last count came (or an error)
                err.usage = sse.usage
                err.cut_off = sse.usage is None  # cut before message_start: the estimate
            else:  # input counted; output may have streamed, uncounted here: all it could be
                err.usage = replace(sse.usage, completion_tokens=max(
                    sse.usage.completion_tokens, request.max_tokens))
            raise err from None
        missing = not sse.reported  # none reported: the gateway charges the estimate
        return Completion("", _NO_USAGE if missing else sse.usage or _NO_USAGE, request.model,
                          stop_reason=sse.stop_reason, id=sse.message_id, usage_missing=missing)

    @staticmethod
    async def _body(request: CompletionRequest, resp: _Answer, answered: bool = False) -> bytes:
        """The body; cut short, a 529 -- ``answered`` (a 200's): the upstream made the answer
        and may have billed it, so the gateway charges the call's estimate (R2.1)."""
        try:
            return await resp.read()
        except HttpError as exc:
            err = UpstreamOverloadedError(request.model, 529, error_body(
                "overloaded_error", f"upstream answer cut short: {exc}"))
            err.cut_off = answered
            raise err from None


def _message(model: str, data: bytes) -> dict[str, Any]:
    """The JSON message of a 200 answer; a body that is none (a proxy's page, bytes cut
    or garbled) is the upstream's failure, answered 502 in the API's error shape."""
    try:
        message = loads(data)
    except (ValueError, RecursionError):
        message = None
    if not isinstance(message, dict):
        text = " ".join(data[:200].decode("utf-8", "replace").split())
        raise UpstreamError(model, 502, error_body(
            "api_error", f"the upstream API answered 200 with no JSON message: {text!r}"))
    return message


def _body_of(request: CompletionRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": request.model_id, "max_tokens": request.max_tokens,
                            "messages": list(request.messages)}
    if request.system:
        body["system"] = request.system
    if request.tools:
        body["tools"] = list(request.tools)
    return body
