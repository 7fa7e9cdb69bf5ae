"""What one governed call carries through its attempts: its route, its shared request
and the signal that replanning broke its task down (the gateway's records)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from policies.replan import BreakDown
from scheduler.core import Message, Passthrough, TextSink, VibeEngineError
from scheduler.tasks import TaskHandle


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes and why."""

    model: str
    reason: str
    fallback: str | None = None


#: The hints of a call given none: one read-only mapping, not an empty dict per call.
NO_HINTS: Mapping[str, Any] = MappingProxyType({})
class BreakDownRequested(VibeEngineError):
    """R6.2 mid-task: the task's model degraded and replanning says break it down.

    Raised by a routed call instead of running it on a tier too weak for the task; the
    orchestrator ends the attempt and runs the smaller parts in its place.
    """

    def __init__(self, task_id: str, decision: BreakDown) -> None:
        self.task_id = task_id
        self.decision = decision
        super().__init__(f"task {task_id} broken down mid-task: {decision.reason}")


@dataclass(frozen=True, slots=True)
class Call:
    """What every attempt of one call shares: output limits, streaming, hints, options."""

    max_tokens: int
    #: tokens reserved for the output: ``max_tokens``, or a larger thinking budget
    out: int
    stream: bool
    hints: Mapping[str, Any]
    options: Mapping[str, Any]
    on_text: TextSink | None
    passthrough: Passthrough | None
    # the request itself: held here rather than in a closure, whose cells, function and
    # coroutine frame every call waiting for a lease would hold as well
    task: TaskHandle
    messages: Sequence[Message]
    system: str
    context: str
    tools: Sequence[Mapping[str, Any]]
    #: the prompt's raw token count (counted once; each attempt calibrates it per model)
    raw_tokens: int
