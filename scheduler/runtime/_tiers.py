"""Which tier a routed call may go to beside the router's choice: the tiers whose
per-model budget cannot take it (R6.7), one tier down after a budget alert (R3.2,
R3.3), and the next substitute after a failure (R6.1).  Plain functions of the
catalog's tiers, the usable models and the task's scopes, for the gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from scheduler.budget import ScopeState
from scheduler.tasks import TaskHandle


def over_budget(scopes: Iterable[ScopeState], tiers: Sequence[str],
                tokens: int) -> frozenset[str]:
    """Tiers whose per-model token budget (any of ``scopes``) cannot take ``tokens``."""
    out: set[str] | None = None
    for scope in scopes:
        caps = scope.limits.tokens_by_model
        if not caps:  # the usual scope: no per-model budget
            continue
        if out is None:
            out = set()
        for tier in tiers:
            cap = caps.get(tier)  # type: ignore[call-overload]
            held = scope.totals.tokens_by_model.get(tier, 0) + scope.reserved_by_model.get(
                tier, 0)
            if cap is not None and held + tokens > cap:
                out.add(tier)
    return _NONE if not out else frozenset(out)


#: No tier over budget: one object for every call (most calls; no per-model budget).
_NONE: frozenset[str] = frozenset()


def cheaper(task: TaskHandle, tiers: Sequence[str], usable: Callable[[int], frozenset[str]],
            over: frozenset[str], model: str, downgraded: bool) -> tuple[str, str] | None:
    """R3.2/R3.3: one tier down after a warning; the cheapest tier when aggressive, among
    the tiers ``usable`` at the task's priority (model health) and not ``over`` budget."""
    signals = task.signals
    if not (signals.aggressive or signals.prefer_cheaper):
        return None  # no budget alert: the usual answer
    floor = 1 if task.spec.requires_high_capability else 0
    idx = tiers.index(model) if model in tiers else 0
    if signals.aggressive:
        target, why = floor, "(cheapest tier: aggressive cost reduction, R3.3)"
    elif signals.prefer_cheaper and not downgraded:
        target, why = max(idx - 1, floor), "(one tier down after a budget warning, R3.2)"
    else:
        return None
    allowed = usable(task.priority) - over
    for i in range(target, idx):
        if tiers[i] in allowed:
            return tiers[i], why
    return None


def next_fallback(substitutes: Sequence[str], usable: frozenset[str], model: str,
                  skip: list[str]) -> str | None:
    """R6.1: where a call that failed on ``model`` goes next — a usable substitute not
    skipped."""
    return next((t for t in substitutes if t in usable and t not in skip and t != model),
                None)
