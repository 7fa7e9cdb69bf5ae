"""The allocation policy as the allocator uses it: its methods bound once, its hints read once.

A policy that declares :class:`~policies.fairness.PolicyHints` lets the
allocator place a new request without asking it (the holder's cached starting
level, its service counter as the rank, a constant first aging step, linear
service weights).  The parts of the allocator copy what they use from here
into their own attributes, so the hot path reads plain slots.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from policies.fairness import AllocationPolicy, WaiterView

__all__ = ["BoundPolicy"]

_NO_HINT: Any = object()


class BoundPolicy:
    """A policy's methods and optional hints, looked up once."""

    __slots__ = (
        "aging_step", "by_counter", "changes_at", "cost", "enqueue_priority", "priority",
        "rank", "rank_quantum", "w_in", "weights",
    )

    def __init__(self, policy: AllocationPolicy) -> None:
        self.priority: Callable[[WaiterView, float], int] = policy.priority
        self.rank: Callable[[WaiterView], float] = policy.rank
        self.changes_at: Callable[[WaiterView, float], float | None] = (
            policy.priority_changes_at)
        self.cost: Callable[[int, int], float] = policy.service
        #: The level queues' band width: the policy's ``rank_quantum`` (0: exact ranks).
        self.rank_quantum = float(getattr(policy, "rank_quantum", 0.0))
        #: Level queues keyed by counter bands (the inline push needs a quantum).
        self.by_counter = (bool(getattr(policy, "ranks_by_counter", False))
                           and self.rank_quantum > 0)
        hint = getattr(policy, "enqueue_priority", None)
        step = getattr(policy, "aging_step_s", _NO_HINT)
        weights: tuple[float, float] | None = getattr(policy, "service_weights", None)
        hinted = callable(hint) and step is not _NO_HINT and weights is not None
        #: The starting level of a holder's new requests (``None``: ask per request).
        self.enqueue_priority: Callable[[int, float, bool], int] | None = (
            hint if hinted else None)
        #: Constant first-change offset (FIFO-tracked); inf: never; None: ask the policy.
        self.aging_step: float | None = None
        #: Service per input and output token (``None``: ask the policy).
        self.weights: tuple[float, float] | None = None
        self.w_in: float | None = None
        if hinted and weights is not None:
            self.aging_step = math.inf if step is None else float(step)
            self.weights = (float(weights[0]), float(weights[1]))
            self.w_in = self.weights[0]
