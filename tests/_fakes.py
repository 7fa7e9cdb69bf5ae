"""Test doubles at the provider boundary (the runtime's own Provider protocol)."""

from __future__ import annotations

import anyio

from scheduler import Completion, CompletionRequest, Usage
from scheduler.core import OverloadedError
from scheduler.store import MemoryStore
from scheduler.store._ledger import SliceGrant


class ScriptedProvider:
    """Returns fixed usage after ``latency_s``; models in ``down`` raise 529."""

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


class SlicedMemoryStore(MemoryStore):
    """A MemoryStore that also leases global-pool slices (the SliceBackend of Redis):
    every lease is granted ``min(share, demand)``; leases and releases are recorded."""

    def __init__(self, share: int) -> None:
        super().__init__()
        self.share = share
        self.leases: list[tuple[str, str, int, int]] = []
        self.released: list[tuple[str, str]] = []

    async def lease_slice(
        self, pool: str, holder: str, *, demand: int, capacity: int, ttl_s: float
    ) -> SliceGrant:
        await anyio.lowlevel.checkpoint()
        self.leases.append((pool, holder, demand, capacity))
        amount = min(self.share, demand, capacity)
        return SliceGrant(pool, holder, amount, amount, 1, ttl_s)

    async def release_slice(self, pool: str, holder: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.released.append((pool, holder))
