"""Which agent of a deadlock cycle yields (R5.7).

A victim policy is pure and synchronous: it gets plain data about the agents
of one cycle and returns the holder id of the one to abort.  The default,
:class:`LowestPriorityVictim`, takes the lowest effective priority, then the
least work done, then the newest task; remaining ties go to the smallest
holder id, so the choice never depends on the order of the cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class VictimCandidate:
    """One agent of a cycle, as the policy sees it.

    ``priority``: effective priority, higher is more important (aging included).
    ``work_done``: how much the current attempt has done (tokens used, say).
    ``started_at``: when the task's current attempt started (loop clock).
    """

    holder: str
    priority: float
    work_done: float
    started_at: float


@runtime_checkable
class VictimPolicy(Protocol):
    """Choose the holder that yields to break one cycle."""

    def choose(self, candidates: Sequence[VictimCandidate]) -> str: ...


class LowestPriorityVictim:
    """Lowest priority, then least work done, then newest task, then smallest id (R5.7)."""

    @staticmethod
    def order(c: VictimCandidate) -> tuple[float, float, float, str]:
        """Sort key: the victim is the minimum."""
        return (c.priority, c.work_done, -c.started_at, c.holder)

    def choose(self, candidates: Sequence[VictimCandidate]) -> str:
        if not candidates:
            raise ValueError("a cycle has at least one agent")
        return min(candidates, key=self.order).holder
