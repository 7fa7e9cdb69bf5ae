"""A minimal Messages API upstream for ``benchmarks.serve``: one fixed answer, no work.

    python -m benchmarks._fixed_upstream   # prints "http://127.0.0.1:PORT" on stdout

A bare ASGI app under uvicorn (no router, no tokenizer): ``POST /v1/messages`` answers
the same small message with its usage, streamed as SSE when asked.  The fake API
tokenizes every request and generates its answer, which would add its own
per-request CPU to both sides of the comparison and so hide what serve adds; the
cheapest upstream is the harshest baseline.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import uvicorn

_USAGE = {"input_tokens": 12, "output_tokens": 8, "cache_creation_input_tokens": 0,
          "cache_read_input_tokens": 0}
_MESSAGE = {"id": "msg_bench", "type": "message", "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "Hello from the fixed upstream."}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": _USAGE}
_JSON = json.dumps(_MESSAGE).encode()


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


_STREAM = b"".join([
    _sse("message_start", {"type": "message_start", "message": {
        **_MESSAGE, "content": [], "stop_reason": None, "usage": {**_USAGE, "output_tokens": 1}}}),
    _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta",
                                           "text": "Hello from the fixed upstream."}}),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _sse("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 8}}),
    _sse("message_stop", {"type": "message_stop"}),
])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    stream = b'"stream":true' in body.replace(b" ", b"")
    payload, kind = (_STREAM, b"text/event-stream") if stream else (_JSON, b"application/json")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"request-id", b"req_bench"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as serve's (see _server)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sys.stdout.write(f"http://127.0.0.1:{sock.getsockname()[1]}\n")
    sys.stdout.flush()
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                            timeout_keep_alive=75)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
