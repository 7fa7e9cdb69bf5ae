"""Allocation order policies (R5.1–R5.3, R5.5).

A policy decides *who goes next* among the requests waiting on a pool.  It is
pure and synchronous: it gets plain :class:`WaiterView` data and ``now`` and
returns a decision; it never awaits and never reads a clock.

The allocator (``scheduler.allocator._allocator``) keeps its waiters indexed so that the
next grant is found in O(1).  For that it asks the policy three things per
waiter: its effective :meth:`~AllocationPolicy.priority` (an int level, higher
first), its :meth:`~AllocationPolicy.rank` inside a level (lower first; ranks
in one band of the policy's optional ``rank_quantum`` tie, see :func:`rank_band`,
and ties go to the earlier request, ``seq``), and when its priority will change
next by itself (:meth:`~AllocationPolicy.priority_changes_at`, e.g. aging), so
the allocator re-indexes it then.  :meth:`~AllocationPolicy.order` is the reference
ordering in O(n log n): the allocator's index must agree with it, and tests
check that it does.

A policy may also declare :class:`PolicyHints` (both built-ins do): shortcuts
that let the allocator skip the policy calls per request on its hot path.  They
must agree with the methods; a test checks that they do for the built-ins.

Whatever the policy says, the allocator enforces the invariants itself
(capacity, max share, min share, background share, no starvation); see
``docs/allocator.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AllocationPolicy",
    "FairnessParams",
    "Fifo",
    "PolicyHints",
    "PriorityWithFairness",
    "WaiterView",
]

W = TypeVar("W", bound="WaiterView")
#: Tolerance for float rounding at aging boundaries (``enqueued_at + k × aging``).
_EPSILON_S = 1e-9


@dataclass(slots=True, eq=False)
class WaiterView:
    """What a policy may know about one waiting request (plain data).

    ``counter`` is the holder's virtual service counter in the pool (VTC);
    ``token_fraction`` its task's tokens used ÷ task budget; ``blocking``
    whether other tasks wait on it (from the wait-for graph).
    """

    holder: str
    seq: int
    enqueued_at: float
    base_priority: int
    tokens: int = 0
    token_fraction: float = 0.0
    blocking: bool = False
    counter: float = 0.0


def rank_band(rank: float, quantum: float) -> float:
    """The band of ``rank`` for a policy's ``rank_quantum``: ranks in one band tie.

    ``rank // quantum``; a quantum of 0 (the default for a policy that declares
    none) keeps every rank apart.
    """
    return rank // quantum if quantum else rank


@runtime_checkable
class AllocationPolicy(Protocol):
    """Orders waiters: higher :meth:`priority` first, then lower :meth:`rank`, then ``seq``.

    A policy may set ``rank_quantum`` (a float attribute, default 0): ranks in
    the same :func:`rank_band` then tie, and the earlier request goes first.
    The allocator serves such bands from O(1) queues in arrival order.
    """

    def priority(self, waiter: WaiterView, now: float) -> int:
        """The effective priority level of ``waiter`` at ``now`` (higher goes first)."""
        ...

    def priority_changes_at(self, waiter: WaiterView, now: float) -> float | None:
        """When :meth:`priority` changes next on its own (``None``: never)."""
        ...

    def rank(self, waiter: WaiterView) -> float:
        """Order inside a priority level (lower goes first)."""
        ...

    def service(self, input_tokens: int, output_tokens: int) -> float:
        """The service a call of this size counts for (the VTC cost function)."""
        ...

    def order(self, waiters: Sequence[W], now: float) -> list[W]:
        """Reference order of ``waiters`` at ``now`` (the first is served first)."""
        ...


@runtime_checkable
class PolicyHints(Protocol):
    """Optional shortcuts an :class:`AllocationPolicy` may declare (all or none).

    The allocator then computes a new request's place without calling the
    policy per request, and calls :meth:`~AllocationPolicy.priority` and
    :meth:`~AllocationPolicy.priority_changes_at` only when a waiter's inputs
    change (aging deadline, ``set_token_fraction``, ``set_blocking``,
    ``register``).
    """

    #: ``rank(w) == w.counter`` (so each priority level's head is its least served).
    ranks_by_counter: bool
    #: A request's priority first changes exactly this long after it was enqueued
    #: (``None``: it never changes on its own).
    aging_step_s: float | None
    #: ``service(i, o) == service_weights[0] * i + service_weights[1] * o``.
    service_weights: tuple[float, float]

    def enqueue_priority(self, base_priority: int, token_fraction: float, blocking: bool) -> int:
        """``priority(w, now)`` of a request enqueued at ``now`` with these holder inputs."""
        ...


class FairnessParams(BaseModel):
    """Parameters of :class:`PriorityWithFairness` (defaults from SPEC.md R5.2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aging_after_s: float = Field(default=30.0, gt=0)
    #: How many aging steps a request may take.  ``None`` (the default) repeats the
    #: step: +1 for every ``aging_after_s`` waited, so a long wait keeps rising until it is
    #: served; ``1`` is exactly R5.2's single "+1 after 30 s".
    aging_max_steps: int | None = Field(default=None, ge=1)
    demotion_at: float = Field(default=0.50, gt=0, le=1)
    blocking_priority: int = 3
    output_weight: float = Field(default=2.0, ge=0)
    #: Service counters in one band of this many tokens tie (the earlier request goes
    #: first); 0 orders by the exact counter, at the cost of a heap-like index.
    rank_quantum: float = Field(default=100.0, ge=0)


class _OrderMixin:
    """The reference order shared by the built-in policies."""

    def priority(self, waiter: WaiterView, now: float) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def rank(self, waiter: WaiterView) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    rank_quantum: float = 0.0

    def order(self, waiters: Sequence[W], now: float) -> list[W]:
        q = self.rank_quantum
        return sorted(waiters, key=lambda w: (
            -self.priority(w, now), rank_band(self.rank(w), q), w.seq))

    def pick(self, waiters: Sequence[W], now: float) -> W | None:
        """The waiter served next, or ``None`` when there is none."""
        if not waiters:
            return None
        q = self.rank_quantum
        return min(waiters, key=lambda w: (
            -self.priority(w, now), rank_band(self.rank(w), q), w.seq))


class PriorityWithFairness(_OrderMixin):
    """R5.2 effective priority, then least service first (VTC, Sheng et al., OSDI 2024).

    Effective priority = base (R5.1) + 1 for every full ``aging_after_s`` waited, at
    most ``aging_max_steps`` times (no bound by default; 1: R5.2's "+1") − 1 while the
    task's token use is above ``demotion_at`` of its budget; a task that others wait
    on is raised to at least ``blocking_priority``.  Inside a level the holder with
    the smallest virtual counter goes first, where a call counts ``input + output_weight × output``;
    counters in one band of ``rank_quantum`` tokens (100) tie, and then the
    earlier request goes first.
    """

    #: Hint for the allocator: :meth:`rank` is the service counter itself, so the
    #: head of each priority level is that level's least-served waiter.
    ranks_by_counter = True

    def __init__(self, params: FairnessParams | None = None) -> None:
        self.params = params or FairnessParams()
        self._aging = self.params.aging_after_s
        self._max_steps = self.params.aging_max_steps
        self._demotion = self.params.demotion_at
        self._boost = self.params.blocking_priority
        self._weight = self.params.output_weight
        self.rank_quantum = self.params.rank_quantum
        # PolicyHints
        self.aging_step_s: float | None = self._aging
        self.service_weights = (1.0, self._weight)

    def enqueue_priority(self, base_priority: int, token_fraction: float, blocking: bool) -> int:
        level = base_priority
        if token_fraction > self._demotion:
            level -= 1
        if blocking and level < self._boost:
            level = self._boost
        return level

    def priority(self, waiter: WaiterView, now: float) -> int:
        level = waiter.base_priority
        waited = now - waiter.enqueued_at + _EPSILON_S
        if waited >= self._aging:
            steps = int(waited // self._aging)
            level += steps if self._max_steps is None else min(steps, self._max_steps)
        if waiter.token_fraction > self._demotion:
            level -= 1
        if waiter.blocking and level < self._boost:
            level = self._boost
        return level

    def priority_changes_at(self, waiter: WaiterView, now: float) -> float | None:
        steps = int(max(0.0, now - waiter.enqueued_at + _EPSILON_S) // self._aging) + 1
        if self._max_steps is not None and steps > self._max_steps:
            return None  # fully aged: the level no longer changes on its own
        return waiter.enqueued_at + steps * self._aging

    def rank(self, waiter: WaiterView) -> float:
        return waiter.counter

    def service(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens + self._weight * output_tokens


class Fifo(_OrderMixin):
    """First come, first served: one level, ordered by arrival (a baseline)."""

    #: PolicyHints: the rank is constant, priorities never change.
    ranks_by_counter = False
    aging_step_s: float | None = None
    #: The allocator serves ranks within this of each other in arrival order: with a
    #: constant rank, one queue in arrival order.
    rank_quantum = math.inf

    def __init__(self, params: FairnessParams | None = None) -> None:
        self.params = params or FairnessParams()
        self.service_weights = (1.0, self.params.output_weight)

    def enqueue_priority(self, base_priority: int, token_fraction: float, blocking: bool) -> int:
        return 0

    def priority(self, waiter: WaiterView, now: float) -> int:
        return 0

    def priority_changes_at(self, waiter: WaiterView, now: float) -> float | None:
        return None

    def rank(self, waiter: WaiterView) -> float:
        return 0.0

    def service(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens + self.params.output_weight * output_tokens
