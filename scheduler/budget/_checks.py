"""The amounts a request asks for against one scope's limits, with what its calls and
operations under way hold (``Reservations.check``'s per-scope steps, R1.1, R1.2)."""

from __future__ import annotations

from collections.abc import Mapping

from scheduler.budget._scope_state import Caps, ScopeState
from scheduler.core import BudgetExceededError


def check_amounts(scope: ScopeState, caps: Caps, tokens: int, cost_usd: float,
                   ops: tuple[tuple[str, int], ...], model: str) -> None:
    """The amounts a request asks for (but a model call's own: :func:`_check_call`) against
    the limits of ``scope``, with what its calls and operations under way hold; the tokens
    and dollars of a call read here, not through ``ScopeState.used`` and ``held``."""
    limits = scope.limits  # ``caps.limits``
    if tokens and (lim := limits.tokens) is not None:
        held: float = scope.reserved_tokens
        used = scope.totals.tokens + held
        if used + tokens > lim:
            raise BudgetExceededError(scope.name, "tokens", used, lim, tokens, held=held)
    if cost_usd and (cost := limits.cost_usd) is not None:
        held = scope.reserved_cost
        used = scope.totals.cost_usd + held
        if used + cost_usd > cost:
            raise BudgetExceededError(scope.name, "cost_usd", used, cost, cost_usd, held=held)
    for dim, amount in ops:
        if amount and (cap := caps.of.get(dim)) is not None:
            _check_dimension(scope, dim, amount, cap)
    if model and caps.per_model:
        _check_model(scope, model, tokens)


def _check_dimension(scope: ScopeState, dim: str, amount: float, lim: float) -> None:
    held = scope.held(dim)
    used = scope.used(dim) + held
    if used + amount > lim:
        raise BudgetExceededError(scope.name, dim, used, lim, amount, held=held)


def check_call(scope: ScopeState, caps: Mapping[str, float | None], prompt_tokens: int,
                completion_tokens: int) -> None:
    """A model call's prompt and completion estimates, and the cache limits (R1.1)."""
    if prompt_tokens and (lim := caps.get("prompt_tokens")) is not None:
        _check_dimension(scope, "prompt_tokens", prompt_tokens, lim)
    if completion_tokens and (lim := caps.get("completion_tokens")) is not None:
        _check_dimension(scope, "completion_tokens", completion_tokens, lim)
    for dim in ("cache_read_tokens", "cache_write_tokens"):
        lim = caps.get(dim)
        if lim is not None and scope.used(dim) >= lim:
            raise BudgetExceededError(scope.name, dim, scope.used(dim), lim)


def _check_model(scope: ScopeState, model: str, tokens: int) -> None:
    mlim = scope.limits.tokens_by_model.get(model)  # type: ignore[call-overload]
    if mlim is not None:
        held = scope.reserved_by_model.get(model, 0)
        used = scope.used(f"tokens:{model}") + held
        if used + tokens > mlim:
            raise BudgetExceededError(scope.name, f"tokens:{model}", used, mlim, tokens,
                                      held=held)
