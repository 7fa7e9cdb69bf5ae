"""Alert thresholds of a scope: which of 70 / 90 / 100 % it passed, each told once
(R3.1), and limits raised by a person re-arming those no longer passed (R3.4)."""

from __future__ import annotations

from collections.abc import Callable

from scheduler.budget._scope_state import Crossing, Level, ScopeState
from scheduler.config import Limits, VibeConfig


class Thresholds:
    """The alert thresholds of one configuration, applied to any scope."""

    def __init__(self, config: VibeConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        alerts = config.alerts  # frozen: the lowest threshold, once
        self._lowest = min(alerts.warning, alerts.critical, alerts.exceeded)

    def _thresholds(self, scope: ScopeState, dim: str) -> dict[Level, float]:
        a = self._config.alerts
        t: dict[Level, float] = {"warning": a.warning, "critical": a.critical,
                                 "exceeded": a.exceeded}
        if dim == "cost_usd" and scope.limits.cost_warning_usd and scope.limits.cost_usd:
            t["warning"] = min(scope.limits.cost_warning_usd / scope.limits.cost_usd, a.critical)
        return t

    def crossings(self, scope: ScopeState) -> list[Crossing]:
        """Thresholds ``scope`` has passed and not reported yet (marks them reported)."""
        # every charge asks this of each of its scopes: the limits and totals are read
        # here, not through ``limited`` and ``used`` per dimension
        caps = scope._caps
        if caps.limits is not scope.limits:
            caps = scope.caps_now()
        out: list[Crossing] = []
        if not caps.limited:
            return out  # an unlimited scope (often the session and the day)
        low = self._lowest  # below it, no threshold is passed (but a cost warning's own)
        warn = caps.cost_warning
        totals, fleet = scope.totals, scope.fleet
        for dim, lim in caps.counted:
            used: float = getattr(totals, dim)
            if fleet is not None:  # every process's use, as the shared ledger last read it
                other: float = getattr(fleet, dim)
                if other > used:
                    used = other
            # else the usual answer: none (``_fire``'s own test, without its frame)
            if used >= lim * low or (
                    warn is not None and dim == "cost_usd" and used >= lim * warn):
                out += self._fire(scope, dim, used, lim)
        for dim, model, lim in caps.models:
            used = totals.tokens_by_model.get(model, 0)
            if fleet is not None:
                used = max(used, fleet.tokens_by_model.get(model, 0))
            if used >= lim * low:
                out += self._fire(scope, dim, used, lim)
        return out

    def time_crossings(self, scope: ScopeState) -> list[Crossing]:
        """Threshold crossings of ``scope``'s wall-time budget, as of now."""
        lim = scope.limits.time_s
        if not lim:
            return []
        used = self._clock() - scope.started_at
        if used < lim * self._lowest:
            return []  # the usual answer, without ``_fire``'s frame
        return self._fire(scope, "time_s", used, lim)

    def _fire(self, scope: ScopeState, dim: str, used: float, lim: float) -> list[Crossing]:
        limits, low = scope.limits, self._lowest
        if dim == "cost_usd" and limits.cost_warning_usd and limits.cost_usd:
            low = min(low, limits.cost_warning_usd / limits.cost_usd)
        if used < lim * low:
            return []  # below every threshold: the usual answer (each charge, each scope)
        out: list[Crossing] = []
        for level, frac in self._thresholds(scope, dim).items():
            if used >= lim * frac and (scope.fired is None or (dim, level) not in scope.fired):
                if scope.fired is None:
                    scope.fired = set()
                scope.fired.add((dim, level))
                out.append(Crossing(scope.name, dim, level, used, lim))
        return out

    def raise_limits(self, scope: ScopeState, extra: Limits) -> None:
        """Add to a scope's limits (a person added budget) and re-arm passed thresholds.
        A dimension the scope does not limit stays unlimited: added budget never makes a
        limit of its amount (a record added under a config that limited it, re-applied
        at a restart or by another process on the store, would cap it below nothing)."""
        data = scope.limits.model_dump()
        for name in extra.model_fields_set:
            add = getattr(extra, name)
            if name == "tokens_by_model":
                merged = dict(data["tokens_by_model"])
                for m, v in add.items():
                    if m in merged:  # a tier without a cap keeps none
                        merged[m] += v
                data[name] = merged
            elif add is not None and data[name] is not None:
                data[name] += add
        warn, cost = scope.limits.cost_warning_usd, scope.limits.cost_usd
        if warn and cost and data["cost_usd"] and "cost_warning_usd" not in extra.model_fields_set:
            data["cost_warning_usd"] = round(data["cost_usd"] * warn / cost, 6)  # same fraction
        scope.limits = Limits.model_validate(data)
        fired = scope.fired or set()
        for dim, level in list(fired):
            lim = scope.limit(dim) if dim != "time_s" else scope.limits.time_s
            used = scope.seen(dim) if dim != "time_s" else self._clock() - scope.started_at
            if lim and used < lim * self._thresholds(scope, dim)[level]:
                fired.discard((dim, level))
