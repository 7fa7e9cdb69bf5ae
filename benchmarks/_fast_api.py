"""A minimal Messages API endpoint for the HTTP benchmark: ``python -m benchmarks._fast_api
--port N``.

One Starlette route on uvicorn answering every ``POST /v1/messages`` with the same
small message at once (no token counting, no rate-limit headers, no faults): the
cheapest server the SDK accepts, so the figures are the client side's.
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_BODY = json.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 2, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 0},
}).encode()


async def messages(request: Request) -> Response:
    await request.body()
    return Response(_BODY, media_type="application/json")


async def models(request: Request) -> Response:
    return Response(b'{"data": [], "has_more": false}', media_type="application/json")


app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"]),
                        Route("/v1/models", models)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="critical",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
