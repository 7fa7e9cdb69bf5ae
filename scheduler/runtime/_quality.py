"""The quality signal of R4.3: a score in [0, 1] for an answer the provider did not score.

The simulated provider supplies a score with every completion; the real
Anthropic API does not.  A :class:`QualityScorer` fills the gap for routed
calls (by default :class:`SignalScorer`, which needs no second model call):
the gateway asks it when ``Completion.quality`` is ``None`` and feeds the
score into the router's correction (below ``routing.quality_floor`` → retry on
the next tier, logged, and similar tasks score higher).

:class:`LlmJudge` is the optional scorer that asks a model: it asks the cheapest tier to rate the
answer from 0 to 10, through the gateway with the model named, so the judge's
tokens are charged to the task like any call and the judge itself is never
routed, corrected or judged.  Configure it with ``routing.quality_scorer =
"llm_judge"`` (or ``"module:Class"`` for your own; the class is built with the
gateway).  An agent may also give its own verdict on its last answer with
``ctx.report_quality(score)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from scheduler.config import VibeConfig
from scheduler.core import (
    Completion,
    ConfigError,
    Message,
    VibeEngineError,
    get_logger,
    resolve_object,
)
from scheduler.routing import Router
from scheduler.tasks import TaskHandle

__all__ = ["LlmJudge", "QualityScorer", "SignalScorer", "make_quality_scorer"]

_log = get_logger("vibe_engine.quality")

JUDGE_SYSTEM = (
    "You grade answers. Rate how well the answer completes the task, from 0 (useless or "
    "wrong) to 10 (complete and correct). Reply with the number only."
)
_NUMBER = re.compile(r"\b(10|[0-9])(?:\.\d+)?\b")


@runtime_checkable
class QualityScorer(Protocol):
    """Scores one routed answer; ``None`` when it cannot tell."""

    async def score(
        self, task: TaskHandle, messages: list[Message], completion: Completion
    ) -> float | None: ...


class NoScorer:
    """The null scorer (``routing.quality_scorer = "none"``): answers stay unscored."""

    async def score(self, task: TaskHandle, messages: list[Message],
                    completion: Completion) -> float | None:
        return None


class Completer(Protocol):
    """What a judge calls through: the governed path (the gateway) and its router."""

    router: Router

    async def complete(
        self, task: TaskHandle, messages: Sequence[Message], *, system: str = "",
        max_tokens: int = 1024, model: str | None = None,
        hints: Mapping[str, Any] | None = None,
    ) -> Completion: ...


class LlmJudge:
    """LLM-as-judge on the cheapest tier (see the module docstring)."""

    def __init__(self, gateway: Completer, *, model: str | None = None,
                 max_answer_chars: int = 8_000) -> None:
        self.gateway = gateway
        self.model = model or gateway.router.catalog.cheapest
        self.max_answer_chars = max_answer_chars

    async def score(
        self, task: TaskHandle, messages: list[Message], completion: Completion
    ) -> float | None:
        asked = "\n\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
        prompt = (f"Task:\n{asked[-4_000:]}\n\nAnswer:\n"
                  f"{completion.text[: self.max_answer_chars]}\n\nRating (0-10):")
        try:
            verdict = await self.gateway.complete(
                task, [{"role": "user", "content": prompt}], system=JUDGE_SYSTEM,
                max_tokens=8, model=self.model, hints={"judge": True},
            )
        except VibeEngineError as exc:  # a judge that fails leaves the answer unscored
            _log.warning("judge_failed", task_id=task.id, error=str(exc))
            return None
        found = _NUMBER.search(verdict.text)
        if found is None:
            _log.info("judge_unreadable", task_id=task.id, verdict=verdict.text[:80])
            return None
        return min(float(found.group(0)), 10.0) / 10.0


#: Stop reasons that mean the model would not or could not answer.
REFUSALS = frozenset({"refusal", "content_filter"})


class SignalScorer:
    """The default scorer: reads the signals an answer carries, without a model call.

    * the model refused (stop reason ``refusal``) → 0;
    * an empty answer that is not a tool call → 0;
    * every tool result the agent sent back in its last turn was an error (the model's
      previous tool calls all failed) → 0.3;
    * otherwise no opinion (``None``): incomplete output (``max_tokens``) and failed
      attempts are corrected by the router itself, and the agent may give its own
      verdict with ``ctx.report_quality``.
    """

    def __init__(self, gateway: object | None = None) -> None:
        self.gateway = gateway

    async def score(
        self, task: TaskHandle, messages: list[Message], completion: Completion
    ) -> float | None:
        return self.signals(messages, completion)

    @staticmethod
    def signals(messages: Sequence[Message], completion: Completion) -> float | None:
        """:meth:`score` itself, without a coroutine: the gateway asks this of the default
        scorer after every routed call (the messages are only read)."""
        if completion.stop_reason in REFUSALS:
            return 0.0
        if not completion.text.strip() and completion.stop_reason != "tool_use":
            return 0.0
        last = messages[-1] if messages else None
        content = last.get("content") if last is not None and last.get("role") == "user" else None
        if isinstance(content, list):  # else no tool result (most turns): no list to make
            results = [b for b in content
                       if isinstance(b, Mapping) and b.get("type") == "tool_result"]
            if results and all(r.get("is_error") for r in results):
                return 0.3
        return None


SCORERS: dict[str, Any] = {"llm_judge": LlmJudge, "signals": SignalScorer}


def make_quality_scorer(config: VibeConfig, gateway: Completer) -> QualityScorer | None:
    """The configured scorer (``routing.quality_scorer``), or ``None`` for ``"none"``."""
    name = config.routing.quality_scorer
    if name == "none":
        return None
    factory = resolve_object(name, field="routing.quality_scorer", builtins=SCORERS,
                             group="vibe_engine.scorers")
    if not isinstance(factory, type):
        raise ConfigError("routing.quality_scorer", name,
                          f"is a {type(factory).__name__}, not a scorer class")
    return factory(gateway)  # type: ignore[no-any-return]
