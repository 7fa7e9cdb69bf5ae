"""Replanning when the preferred model is unavailable or the budget cannot cover it (R6.2, R6.7).

:class:`DefaultReplanPolicy` decides, in this order:

1. **simplify** — the budget is critical (≥ 90 % and < 100 % used): the agent is
   told to do only the key part of the task (at 100 % the task pauses for a
   person's decision instead, R3.4);
2. **proceed** — the model the task wants is usable now;
3. **defer** — the wanted model is the strongest tier, temporarily unavailable
   (down or still recovering), the task is complex and not urgent (priority ≤
   normal) and has not waited longer than ``max_defer_s``: queue it until the
   model recovers, and notify;
4. **break down** — the task wants more than the cheapest tier but only the
   cheapest is usable: split it into smaller tasks (the agent's own
   ``decompose`` hook when it has one, else one task per part), each with a
   limited scope, plus an added verification step (R6.2);
5. otherwise **proceed** on the best usable substitute.

The policy returns plain decision data; the scheduler applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from policies.complexity import TaskInfo


class ReplanParams(BaseModel):
    """Parameters of :class:`DefaultReplanPolicy`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    simplify_at: float = Field(default=0.90, gt=0, le=1)
    defer_max_priority: int = Field(default=2, ge=0)
    max_defer_s: float = Field(default=600.0, ge=0)
    part_max_output_tokens: int = Field(default=4_000, gt=0)
    generic_parts: int = Field(default=3, gt=0)
    simplify_instruction: str = (
        "The budget is nearly spent: do only the key part of the task, then stop."
    )


@dataclass(frozen=True, slots=True)
class ReplanInput:
    """Plain data the policy decides from."""

    task: TaskInfo
    #: the tier the task wants (its complexity assessment, or a correction).
    wanted: str
    #: tiers cheapest first.
    tiers: Sequence[str]
    #: tiers this task may use now.
    usable: frozenset[str]
    budget_fraction: float
    has_decompose: bool = False
    #: the parts a generic split works on (files, modules …), when known.
    parts: tuple[str, ...] = ()
    #: how long the task has already been deferred.
    deferred_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Proceed:
    model: str | None
    reason: str = ""
    kind: Literal["proceed"] = "proceed"


@dataclass(frozen=True, slots=True)
class Defer:
    until_model: str
    max_wait_s: float
    reason: str
    kind: Literal["defer"] = "defer"


@dataclass(frozen=True, slots=True)
class BreakDown:
    model: str
    use_agent_hook: bool
    parts: tuple[str, ...]
    add_verification: bool
    max_output_tokens: int
    reason: str
    kind: Literal["break_down"] = "break_down"


@dataclass(frozen=True, slots=True)
class Simplify:
    instruction: str
    reason: str
    kind: Literal["simplify"] = "simplify"


ReplanDecision = Proceed | Defer | BreakDown | Simplify


@runtime_checkable
class ReplanPolicy(Protocol):
    """Decides how a task continues when its model or budget falls short."""

    def plan(self, data: ReplanInput) -> ReplanDecision: ...


class DefaultReplanPolicy:
    """The default :class:`ReplanPolicy` (see the module docstring)."""

    def __init__(self, params: ReplanParams | None = None) -> None:
        self.params = params or ReplanParams()
        # the usual decision, one per tier (frozen, so shared): every routed call asks
        self._available: dict[str, Proceed] = {}

    def proceeds(self, budget_fraction: float, wanted: str, usable: frozenset[str]) -> bool:
        """Whether :meth:`plan` proceeds on ``wanted`` at once, told from these alone: the
        usual case (budget below ``simplify_at``, the wanted tier usable), which the
        replanner so answers without gathering the whole input.  A subclass overriding
        :meth:`plan` is asked for its whole decision unless it overrides this too."""
        return (not self.params.simplify_at <= budget_fraction < 1.0) and wanted in usable

    def plan(self, data: ReplanInput) -> ReplanDecision:
        p = self.params
        if p.simplify_at <= data.budget_fraction < 1.0:  # at 100 % the task pauses (R3.4)
            return Simplify(p.simplify_instruction,
                            f"budget critical: {data.budget_fraction:.0%} used")
        if data.wanted in data.usable:
            found = self._available.get(data.wanted)
            if found is None:
                found = self._available[data.wanted] = Proceed(
                    data.wanted, f"{data.wanted} is available")
            return found
        tiers = list(data.tiers)
        strongest = tiers[-1]
        if (data.wanted == strongest and data.task.complexity == "complex"
                and data.task.priority <= p.defer_max_priority
                and data.deferred_s < p.max_defer_s):
            return Defer(data.wanted, p.max_defer_s - data.deferred_s,
                         f"{data.wanted} temporarily unavailable: queued until it recovers")
        usable = [t for t in tiers if t in data.usable]
        if usable == [tiers[0]] and tiers.index(data.wanted) > 0:
            parts = data.parts or tuple(
                f"part {i + 1} of {p.generic_parts}" for i in range(p.generic_parts)
            )
            return BreakDown(
                tiers[0], data.has_decompose, () if data.has_decompose else parts, True,
                p.part_max_output_tokens,
                f"only {tiers[0]} available for a task that wants {data.wanted}: "
                "smaller parts plus a verification step",
            )
        below = [t for t in reversed(tiers[: tiers.index(data.wanted)]) if t in data.usable]
        above = [t for t in tiers[tiers.index(data.wanted) + 1:] if t in data.usable]
        sub = next(iter(below + above), None)
        return Proceed(sub, f"{data.wanted} unavailable: continue on {sub}")
