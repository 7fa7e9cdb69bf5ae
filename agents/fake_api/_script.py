"""Scripted answers: Messages API response bodies replayed in order, plain or streamed.

A script is JSON lines, one response body per line — ``content`` blocks,
``stop_reason`` and, optionally, ``usage`` and ``id``.  A plain request gets
the body (with the request's model, an id and the usage filled in); a
streamed one gets the events the API sends for that body: ``message_start``,
per block ``content_block_start`` / deltas / ``content_block_stop``, then
``message_delta`` and ``message_stop``.  Text arrives word by word, a tool
call's input as ``input_json_delta`` pieces, thinking as ``thinking_delta``
pieces and a ``signature_delta``; blocks of other types arrive whole in their
start event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: Models the fake API serves by default: the catalog's defaults and other current Claude
#: ids; each also by its dated snapshot id (:func:`served`).
SERVED_MODELS: tuple[str, ...] = (
    "claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-5",
    "claude-sonnet-4-5", "claude-opus-4-1", "claude-opus-4-0", "claude-sonnet-4-0",
    "claude-3-7-sonnet", "claude-3-5-haiku",
)

#: A snapshot id: a served id and its release date (``claude-sonnet-4-5-20250929``).
_DATED = re.compile(r"^(?P<base>.+)-\d{8}$")


def served(model: str, models: tuple[str, ...]) -> bool:
    """Whether ``models`` serve ``model``: one of them, or its dated snapshot id, as the
    real API accepts both (and clients pinned to a snapshot send the dated one)."""
    if model in models:
        return True
    dated = _DATED.match(model)
    return dated is not None and dated["base"] in models

Event = tuple[str, dict[str, Any]]


def load_script(path: str | Path) -> list[dict[str, Any]]:
    """The response bodies of a JSON-lines script; a bad line raises ``ValueError``
    naming its line number."""
    bodies: list[dict[str, Any]] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("content"), list):
            raise ValueError(f"{path}:{n}: a response body needs a 'content' list")
        bodies.append(body)
    return bodies


def _pieces(text: str) -> list[str]:
    """Text cut the way a stream delivers it: a word with the space before it."""
    return re.findall(r"\s*\S+|\s+$", text) or [text]


def _json_pieces(value: Any) -> list[str]:
    raw = json.dumps(value)
    size = max(len(raw) // 3, 1)
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def _block_events(index: int, block: Mapping[str, Any]) -> Iterator[Event]:
    kind = block.get("type")

    def delta(d: dict[str, Any]) -> Event:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}

    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [delta({"type": "text_delta", "text": p})
                  for p in _pieces(str(block.get("text", "")))]
    elif kind in ("tool_use", "server_tool_use"):
        start = {**block, "input": {}}
        deltas = [delta({"type": "input_json_delta", "partial_json": p})
                  for p in _json_pieces(block.get("input", {}))]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": ""}
        deltas = [delta({"type": "thinking_delta", "thinking": p})
                  for p in _pieces(str(block.get("thinking", "")))]
        deltas.append(delta({"type": "signature_delta",
                             "signature": str(block.get("signature", ""))}))
    else:  # redacted thinking and types the fake does not know arrive whole
        start, deltas = dict(block), []
    yield "content_block_start", {"type": "content_block_start", "index": index,
                                  "content_block": start}
    yield from deltas
    yield "content_block_stop", {"type": "content_block_stop", "index": index}


def stream_events(message: Mapping[str, Any]) -> Iterator[Event]:
    """The event sequence of a streamed ``message`` (a complete response body)."""
    usage = dict(message.get("usage") or {})
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    yield "message_start", {"type": "message_start", "message": start}
    pinged = False
    for i, block in enumerate(message.get("content") or ()):
        for event in _block_events(i, block):
            yield event
            if not pinged:  # the API sends its ping after the first block starts
                pinged = True
                yield "ping", {"type": "ping"}
    if not pinged:
        yield "ping", {"type": "ping"}
    delta_usage = {k: v for k, v in usage.items() if k not in ("cache_creation", "service_tier")}
    yield "message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message.get("stop_reason"),
                  "stop_sequence": message.get("stop_sequence")},
        "usage": delta_usage,
    }
    yield "message_stop", {"type": "message_stop"}


def models_page(models: tuple[str, ...]) -> dict[str, Any]:
    """``GET /v1/models``: the served models, newest first, as one page."""
    data = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
             "created_at": "2026-01-01T00:00:00Z"} for m in models]
    return {"data": data, "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None}
