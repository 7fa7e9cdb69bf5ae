"""Anthropic-shaped error responses of the gateway (#21).

Budget refusals use the status and type the API itself uses when an account cannot
pay (400 ``invalid_request_error``) with ``x-should-retry: false``: the official SDKs
retry 408/409/429/5xx, and retrying a spent budget only burns time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.responses import Response

from scheduler.core import BudgetExceededError, FinishRequestedError

#: Status of each error type, as the Messages API sends them.
STATUS = {"invalid_request_error": 400, "authentication_error": 401,
          "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
          "rate_limit_error": 429,
          "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


def error_json(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def error_response(kind: str, message: str, *, status: int | None = None,
                   headers: Mapping[str, str] | None = None) -> Response:
    return Response(error_json(kind, message), status_code=status or STATUS[kind],
                    media_type="application/json", headers=dict(headers or {}))


#: Sent with every refusal the client should not retry.
NO_RETRY = {"x-should-retry": "false"}


def _how_to_raise(key: str, exc: BudgetExceededError, hold: bool) -> str:
    scope, dim = exc.scope, exc.dimension
    field = "tokens_by_model" if dim.startswith("tokens:") else dim
    if scope == f"task:{key}":
        where = f"raise serve.keys[name={key!r}].budget.{field} in the serve config"
        if hold:
            return (f"decide with `vibe-engine decide {key} add --tokens N` (or --cost USD), "
                    f"or {where}")
        return f"{where} and restart serve, or set on_limit = \"hold\" to decide at the limit"
    if scope.startswith(f"task-day:{key}:"):
        where = (f"raise serve.keys[name={key!r}].day_budget.{field} in the serve config "
                 f"(it starts over at midnight)")
        if hold:
            return (f"decide with `vibe-engine decide {key} add --tokens N` (or --cost USD) "
                    f"for today, or {where}")
        return f"{where} and restart serve, or set on_limit = \"hold\" to decide at the limit"
    section = "session" if scope.startswith("session:") else "day"
    return f"raise budgets.{section}.{field} in the serve config and restart serve"


def budget_refusal(key: str, exc: BudgetExceededError, *, hold: bool = False) -> bytes:
    """The body of a refusal at a budget limit: which budget, and how to raise it."""
    dim = exc.dimension

    def shown(amount: float) -> str:
        if amount >= 1e15:  # a float's digits past its precision say nothing
            return f"{amount:.3g}"
        return f"{amount:.4f}" if dim == "cost_usd" else f"{amount:,.0f}"

    # what the request asks for: a max_tokens far over the budget is refused as such,
    # not as a budget that looks nearly unused yet "at its limit"
    needs = f", this request needs {shown(exc.requested)}" if exc.requested > 0 else ""
    # what was spent and what calls under way hold, apart: not "used" when little is spent
    used = (f"used {shown(exc.used)}" if not exc.held else
            f"spent {shown(exc.used - exc.held)} + held by calls under way {shown(exc.held)}")
    return error_json("invalid_request_error",
                      f"vibe-engine: key {key!r} is at its budget limit: {exc.scope} {dim} "
                      f"{used} of {shown(exc.limit)}{needs}; {_how_to_raise(key, exc, hold)}")


def finish_refusal(key: str, exc: FinishRequestedError, max_hold_s: float) -> bytes:
    """A held request that ended without more budget (timeout or a ``finish`` decision)."""
    why = (f"no decision within serve.max_hold_s = {max_hold_s:g} s"
           if exc.source == "timeout" else f"the decision was finish ({exc.source})")
    return error_json("invalid_request_error",
                      f"vibe-engine: key {key!r} was held at its budget limit and {why}; "
                      f"add budget with `vibe-engine decide {key} add --tokens N`")
