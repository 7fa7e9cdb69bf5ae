"""The request checks the Messages API makes before any model work (a 400 each).

The real API validates a request's shape and answers ``400 invalid_request_error``
naming the field (``system: Input should be a valid list``); the fake answers the
same, so a client or proxy tested against it sees what it would see in production,
never a 500 from a ``TypeError`` deep in the token count.  What a content block
holds is left alone: blocks are many and the API's own to judge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_ROLES = ("user", "assistant")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def request_problem(body: Mapping[str, Any], *, counting: bool = False) -> str | None:
    """Why the API would refuse ``body`` (``field: reason``), or None.  ``counting``:
    a ``count_tokens`` request, which has no ``max_tokens`` or ``stream``."""
    for check in (_model_problem, _messages_problem, _system_problem, _tools_problem):
        problem = check(body)
        if problem is not None:
            return problem
    return None if counting else _sampling_problem(body)


def _model_problem(body: Mapping[str, Any]) -> str | None:
    if "model" not in body:
        return "model: Field required"
    return None if isinstance(body["model"], str) else "model: Input should be a valid string"


def _messages_problem(body: Mapping[str, Any]) -> str | None:
    messages = body.get("messages")
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"messages.{i}: Input should be a valid dictionary"
        if message.get("role") not in _ROLES:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if "content" not in message:
            return f"messages.{i}.content: Field required"
        content = message["content"]
        if not isinstance(content, str | list):
            return f"messages.{i}.content: Input should be a valid string or list"
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
                return f"messages.{i}.content.{j}: Input should be a content block"
    return None


def _system_problem(body: Mapping[str, Any]) -> str | None:
    system = body.get("system")
    if system is None or isinstance(system, str):
        return None
    if not isinstance(system, list):
        return "system: Input should be a valid string or list"
    for i, block in enumerate(system):
        if not isinstance(block, Mapping) or block.get("type") != "text":
            return f"system.{i}: Input should be a text block"
        if not isinstance(block.get("text"), str):
            return f"system.{i}.text: Input should be a valid string"
    return None


def _tools_problem(body: Mapping[str, Any]) -> str | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "tools: Input should be a valid list"
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            return f"tools.{i}: Input should be a valid dictionary"
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            return f"tools.{i}.name: Field required"
        schema = tool.get("input_schema")
        if "type" not in tool and not isinstance(schema, Mapping):  # a custom tool
            return f"tools.{i}.input_schema: Input should be a valid dictionary"
    return None


def _sampling_problem(body: Mapping[str, Any]) -> str | None:
    if "max_tokens" not in body:
        return "max_tokens: Field required"
    if not _is_int(body["max_tokens"]):
        return "max_tokens: Input should be a valid integer"
    if body["max_tokens"] < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not (_is_number(value) and 0 <= value <= 1):
            return f"{name}: Input should be a number between 0 and 1"
    if body.get("top_k") is not None and not (_is_int(body["top_k"]) and body["top_k"] >= 0):
        return "top_k: Input should be a non-negative integer"
    return None
