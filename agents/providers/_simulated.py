"""A deterministic stand-in for a model provider (the embedded default).

Given the same seed and the same calls it returns the same usage, latency,
failures and quality, so the demo and the benchmarks are reproducible:

* input tokens: about one token per 3.6 characters of everything sent (Claude's
  tokenizer counts a little more than tiktoken's ``cl100k_base``);
* a system prompt of 1,024+ tokens is written to the cache on first use per
  task and read from it after (R2.4);
* output tokens: uniform in ``output_tokens``, capped by ``max_tokens``;
* latency per tier (``latency_s`` × ``time_scale``), waited through anyio;
* failures (529 overloaded) with ``failure_rate`` per attempt and tier, forced by
  :meth:`set_down`, or scripted as ``outages`` (windows in seconds after the first call);
  like the SDK, a failed attempt is retried ``retries`` times before the 529 is raised;
* quality in [0, 1]: tier capability minus task difficulty (``hints['difficulty']``);
* tools: given tool definitions, the first ``hints['tool_turns']`` (default 1) answers
  ask for a tool (``stop_reason="tool_use"``) — ``list_files`` first, then
  ``write_file`` of a step file, else the first tool with its required fields empty —
  so tool loops run offline; the answer after them ends the turn.  Simulated: no
  model decides anything.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import anyio

from scheduler import Completion, CompletionRequest, Usage
from scheduler.config import SimulatedProviderConfig
from scheduler.core import OverloadedError

CAPABILITY = {"haiku": 0.72, "sonnet": 0.85, "opus": 0.95}
CHARS_PER_TOKEN = 3.6
MIN_CACHEABLE = 1024


def _tool_call(request: CompletionRequest) -> dict[str, Any] | None:
    """The tool_use block a simulated answer asks for, or None when the turn should end."""
    turn = sum(1 for m in request.messages if m.get("role") == "assistant")
    if not request.tools or turn >= int(request.hints.get("tool_turns", 1)):
        return None
    names = [str(t.get("name")) for t in request.tools]
    if turn == 0 and "list_files" in names:
        name, args = "list_files", {"path": "."}
    elif "write_file" in names:
        name = "write_file"
        args = {"path": f"step_{turn}.py",
                "content": f"# simulated step {turn} ({request.model})\n"}
    else:
        name = names[0]
        schema = request.tools[0].get("input_schema") or {}
        args = {k: "" for k in schema.get("required", ())}
    return {"type": "tool_use", "id": f"toolu_sim_{request.task_id}_{turn}", "name": name,
            "input": args}


class SimulatedProvider:
    """Deterministic simulated provider."""

    def __init__(self, config: SimulatedProviderConfig | None = None) -> None:
        self.config = config or SimulatedProviderConfig()
        self._calls: dict[str, int] = {}
        self._cached: set[tuple[str, str]] = set()
        self._down: set[str] = set()
        self._started: float | None = None
        self.reported: list[Usage] = []

    def set_down(self, model: str, down: bool = True) -> None:
        """Force every call to ``model`` to fail with 529 (outage drills)."""
        (self._down.add if down else self._down.discard)(model)

    def _rng(self, request: CompletionRequest) -> random.Random:
        n = self._calls.get(request.task_id, 0)
        self._calls[request.task_id] = n + 1
        key = f"{self.config.seed}:{request.task_id}:{request.model}:{n}".encode()
        return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))

    def in_outage(self, model: str) -> bool:
        """Whether a scripted outage window of ``model`` is open now."""
        if not self.config.outages:
            return False
        now = anyio.current_time()
        if self._started is None:
            self._started = now
        t = now - self._started
        return any(w.model == model and w.start_s <= t < w.end_s for w in self.config.outages)

    async def complete(self, request: CompletionRequest) -> Completion:
        rng = self._rng(request)
        model = request.model
        self.in_outage(model)  # the first call starts the outage clock
        base = self.config.latency_s.get(model, 1.0) * self.config.time_scale  # type: ignore[call-overload]
        rate = self.config.failure_rate.get(model, 0.0)  # type: ignore[call-overload]
        latency = 0.0
        attempts = 0
        while True:  # like the SDK: a 529 is retried ``retries`` times before it is raised
            attempts += 1
            step = base * (0.75 + rng.random() / 2)
            latency += step
            await anyio.sleep(step)
            if not (model in self._down or self.in_outage(model) or rng.random() < rate):
                break
            if attempts > self.config.retries:
                raise OverloadedError(model, "overloaded_error (simulated)", status=529)
        system_tokens = round(len(request.system) / CHARS_PER_TOKEN)
        rest = sum(len(json.dumps(m.get("content", ""))) for m in request.messages)
        rest += len(json.dumps(list(request.tools))) if request.tools else 0
        rest_tokens = round(rest / CHARS_PER_TOKEN) + 4 * len(request.messages)
        cache_read = cache_write = 0
        prompt = rest_tokens
        if system_tokens >= MIN_CACHEABLE:
            key = (request.task_id, hashlib.blake2b(request.system.encode()).hexdigest())
            if key in self._cached:
                cache_read = system_tokens
            else:
                self._cached.add(key)
                cache_write = system_tokens
        else:
            prompt += system_tokens
        lo, hi = self.config.output_tokens
        output = min(rng.randint(lo, hi), request.max_tokens)
        difficulty = float(request.hints.get("difficulty", 0.3))
        quality = max(0.0, min(1.0, CAPABILITY.get(model, 0.7) - difficulty / 2
                               + rng.uniform(-0.1, 0.1)))
        usage = Usage(prompt, output, cache_read, cache_write, 0)
        self.reported.append(usage)
        stop = "max_tokens" if output >= request.max_tokens else "end_turn"
        text = f"[{model}] simulated answer ({output} tokens)"
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        call = _tool_call(request)
        if call is not None:
            content.append(call)
            stop = "tool_use"
        return Completion.from_blocks(
            content, usage, model, stop_reason=stop, latency_s=latency, quality=quality,
            attempts=attempts,
        )

    async def aclose(self) -> None:
        return None
