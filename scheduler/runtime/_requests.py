"""Checking a model call's arguments at the gateway's entry (R2.1, R2.2).

A bad argument would otherwise surface deep in the path as a ``TypeError``
(``max_tokens=None``) or, worse, settle a budget wrongly (a negative
``max_tokens`` reserves less than the prompt).  Each check raises
:class:`~scheduler.core.InvalidArgumentError` (a ``ValueError``) naming the argument.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from scheduler.core import InvalidArgumentError

_PLAIN_SEQUENCES = (list, tuple)
#: A message's content: text or a list of blocks (None: left to the API to refuse); a
#: number or a bool would otherwise fail deep in the token count as a TypeError.
_CONTENT = (str, list, tuple, type(None))


def check_request(
    messages: Any, *, system: Any, context: Any, tools: Any, max_tokens: Any, model: Any,
    hints: Any, models: Collection[str],
) -> None:
    """Raise :class:`InvalidArgumentError` for the first invalid argument of a call."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidArgumentError("max_tokens", max_tokens, "must be a positive int")
    if max_tokens <= 0:
        raise InvalidArgumentError("max_tokens", max_tokens, "must be > 0")
    # a list of plain dicts and no tools, what nearly every call passes: no call more
    plain = type(messages) in _PLAIN_SEQUENCES
    for item in messages if plain else ():
        if type(item) is not dict or type(item.get("content")) not in _CONTENT:
            plain = False
            break
    if not plain:
        _check_dicts("messages", messages)
        _check_contents(messages)
    if not messages:
        raise InvalidArgumentError("messages", messages, "must hold at least one message")
    if type(tools) is not tuple or tools:
        _check_dicts("tools", tools)
    if type(system) is not str or type(context) is not str:
        for name, value in (("system", system), ("context", context)):
            if not isinstance(value, str):
                raise InvalidArgumentError(name, value, "must be a str")
    if model is not None and model not in models:
        raise InvalidArgumentError("model", model, f"unknown model; known: {', '.join(models)}")
    if hints is not None and not isinstance(hints, Mapping):
        raise InvalidArgumentError("hints", hints, "must be a mapping or None")


def _check_dicts(name: str, value: Any) -> None:
    # a list or tuple of plain dicts, what nearly every call passes, needs no ABC checks
    if type(value) in _PLAIN_SEQUENCES and (
            not value or all(type(item) is dict for item in value)):
        return
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise InvalidArgumentError(name, value, "must be a list of dicts")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise InvalidArgumentError(f"{name}[{i}]", item, "must be a dict")


def _check_contents(messages: Sequence[Mapping[str, Any]]) -> None:
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, _CONTENT):
            raise InvalidArgumentError(f"messages[{i}].content", content,
                                       "must be a str or a list of content blocks")
