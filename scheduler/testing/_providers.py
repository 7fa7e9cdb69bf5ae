"""Providers that answer from a script instead of the network."""

from __future__ import annotations

import anyio

from scheduler.core import Completion, CompletionRequest, OverloadedError, Usage


class ScriptedProvider:
    """Returns fixed usage after ``latency_s``; models in ``down`` raise 529.

    Records every request in ``calls`` and the peak of concurrent calls in
    ``max_in_flight``.  ``down`` may be changed while a run goes on.
    """

    def __init__(self, *, latency_s: float = 0.01, prompt: int = 100, completion: int = 50,
                 down: set[str] | None = None) -> None:
        self.latency_s = latency_s
        self.prompt = prompt
        self.completion = completion
        self.down = down or set()
        self.calls: list[CompletionRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.latency_s)
        finally:
            self.in_flight -= 1
        if request.model in self.down:
            raise OverloadedError(request.model, "overloaded_error", status=529)
        return Completion("ok", Usage(self.prompt, self.completion), request.model)

    async def aclose(self) -> None:
        return None


class InstantProvider:
    """Answers every request at once with the same usage and keeps nothing (a
    :class:`ScriptedProvider` records every call): what is measured is the runtime's own
    cost and memory, not the provider's."""

    def __init__(self, usage: Usage | None = None) -> None:
        self.usage = usage or Usage(120, 40)

    async def complete(self, request: CompletionRequest) -> Completion:
        return Completion("ok", self.usage, request.model)

    async def aclose(self) -> None:
        return None
