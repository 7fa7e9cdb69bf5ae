"""Model selection (SPEC R4.2): the cheapest model that can do the task.

Rules, in the spec's order:

1. complexity → model (the :class:`~policies.complexity.Assessment`'s tier);
2. more than 70 % of the budget used → one tier down;
3. the model is unavailable → its fallback (the task type's fallback when the
   model is that type's preferred one, else the next tier down, else up);
4. the task requires high capability → at least sonnet (the cheapest usable
   tier at or above it).

The decision carries the model, a human-readable reason ("complexity: …,
budget: …%") and the fallback model for a call that fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from policies.complexity import Assessment, TaskInfo


class RoutingParams(BaseModel):
    """Parameters of :class:`CheapestCapableRouting` (the ``[routing]`` section extends them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    downgrade_above: float = Field(default=0.70, gt=0, le=1)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a call goes, why, and where it goes if that model fails."""

    model: str
    reason: str
    fallback: str | None = None
    #: the model complexity alone asked for (before budget, availability, floor).
    wanted: str = ""
    score: int | None = None
    downgraded: bool = False
    substituted: bool = False
    #: the capability floor could not be met with the usable models.
    floor_unmet: bool = False


@dataclass(frozen=True, slots=True)
class RoutingInput:
    """Plain data a routing policy decides from."""

    task: TaskInfo
    assessment: Assessment
    budget_fraction: float
    #: tiers cheapest first (haiku, sonnet, opus).
    tiers: Sequence[str]
    #: tiers this call may use now (health and priority already applied).
    usable: frozenset[str]
    #: substitutes of each tier for this task's type, best first.
    substitutes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: at least this tier (a correction already upgraded the task).
    min_tier: str | None = None
    #: tiers left out of ``usable`` because their per-model budget cannot cover the call.
    over_budget: frozenset[str] = frozenset()


@runtime_checkable
class RoutingPolicy(Protocol):
    """Chooses the model of one call."""

    def select(self, data: RoutingInput) -> RouteDecision: ...


class CheapestCapableRouting:
    """The default :class:`RoutingPolicy` (see the module docstring)."""

    #: How many decisions :meth:`select` keeps.
    KEPT = 256

    def __init__(self, params: RoutingParams | None = None, floor: str = "sonnet") -> None:
        self.params = params or RoutingParams()
        self.floor = floor
        # decisions by what they depend on (see :meth:`select`), with the objects named
        # by id in the key: calls routed alike, most of a run's, share one decision
        self._decided: dict[tuple[object, ...], tuple[object, object, object,
                                                      RouteDecision]] = {}

    def budget_key(self, budget_fraction: float) -> tuple[str, bool]:
        """What of the budget fraction :meth:`select` depends on: its whole percent (the
        reason shows it) and whether it passed ``downgrade_above``.

        Defining it also says what else a decision depends on: of the task only its type
        and ``requires_high_capability``, then the assessment, the usable and over-budget
        tiers and ``min_tier``.  Calls alike in these, of any task, get the same decision
        (the router reuses it without building a :class:`RoutingInput`).  A subclass
        overriding :meth:`select` is asked every time unless it overrides this too."""
        return f"{budget_fraction:.0%}", budget_fraction > self.params.downgrade_above

    def select(self, data: RoutingInput) -> RouteDecision:
        """The decision for ``data``: the budget fraction counts only through
        :meth:`budget_key`."""
        a, subs, tiers = data.assessment, data.substitutes, data.tiers
        used = f"{data.budget_fraction:.0%}"
        key = (id(a), id(subs), id(tiers), used,
               data.budget_fraction > self.params.downgrade_above, data.usable,
               data.min_tier, data.over_budget, data.task.requires_high_capability)
        found = self._decided.get(key)
        if found is not None and found[0] is a and found[1] is subs and found[2] is tiers:
            return found[3]
        decision = self._select(data, used)
        if len(self._decided) >= self.KEPT:
            self._decided.clear()
        self._decided[key] = (a, subs, tiers, decision)
        return decision

    def _select(self, data: RoutingInput, used: str) -> RouteDecision:
        tiers = list(data.tiers)
        a = data.assessment
        model = a.tier
        notes = [f"complexity: {a.features.output}/{a.features.depth}/{a.features.kind} "
                 f"score {a.score}{' (learned)' if a.learned else ''} → {model}",
                 f"budget: {used}"]
        downgraded = substituted = floor_unmet = False
        low = tiers.index(data.min_tier) if data.min_tier in tiers else 0
        if data.budget_fraction > self.params.downgrade_above and tiers.index(model) > low:
            model = tiers[tiers.index(model) - 1]
            downgraded = True
            notes[-1] += f" > {self.params.downgrade_above:.0%} → one tier down to {model}"
        if tiers.index(model) < low:
            model = tiers[low]
            notes.append(f"upgraded after correction → {model}")
        if model not in data.usable:
            sub = next((t for t in data.substitutes.get(model, ()) if t in data.usable), None)
            why = "budget cannot cover it" if model in data.over_budget else "unavailable"
            if sub is not None:
                notes.append(f"{model} {why} → {sub}")
                model, substituted = sub, True
            else:
                notes.append(f"{model} unavailable and no substitute")
        needs = data.task.requires_high_capability and self.floor in tiers
        if needs and tiers.index(model) < tiers.index(self.floor):
            strong = [t for t in tiers[tiers.index(self.floor):] if t in data.usable]
            if strong:
                model = strong[0]
                notes.append(f"requires high capability → {model}")
            else:
                floor_unmet = True
                notes.append(f"requires high capability but only {model} is usable")
        fallback = next(
            (t for t in data.substitutes.get(model, ()) if t in data.usable and t != model), None
        )
        return RouteDecision(
            model, ", ".join(notes), fallback, a.tier, a.score, downgraded, substituted,
            floor_unmet,
        )
