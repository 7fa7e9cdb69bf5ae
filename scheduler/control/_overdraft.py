"""Overdraft: a limited grace beyond a limit to finish an operation in progress (R3.5).

A call made inside a critical section (see ``scheduler.control._pause``) that would
cross a token or cost limit may go over it by at most the grace
(``OverdraftConfig``: 5,000 tokens or $0.10) instead of pausing mid-operation.

The grace belongs to a *budget scope* (task, session, day), not to an agent:
many agents sharing a session can together overdraw it by one grace only.
Each scope gets one overdraft per budget period; a period ends when a person
adds budget to the scope, which first repays what is outstanding.  An
overdraft is denied when the scope's grace was already used in this period,
when an earlier overdraft is still unpaid (the budget added was smaller than
it), when the overshoot is larger than the grace, or for a dimension that has
no grace (time, counted operations).  Grants are recorded as state records of
kind ``overdraft`` so they survive a restart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from scheduler.budget import Reservation, ScopeState, Tracker
from scheduler.config import OverdraftConfig
from scheduler.core import BudgetExceededError, EventBus, OverdraftDeniedError, get_logger
from scheduler.store import Store

_log = get_logger("vibe_engine.overdraft")
_EPS = 1e-12


@dataclass(slots=True)
class OverdraftRecord:
    """One granted overdraft on one scope, and how much of it was repaid."""

    key: str
    scope: str
    task_id: str
    operation: str
    period: int
    tokens: int
    cost_usd: float
    repaid_tokens: int = 0
    repaid_cost_usd: float = 0.0
    #: The session that took it: a task scope's grace is per session, like its budget.
    session_id: str = ""

    @property
    def outstanding_tokens(self) -> int:
        return max(self.tokens - self.repaid_tokens, 0)

    @property
    def outstanding_cost_usd(self) -> float:
        return max(self.cost_usd - self.repaid_cost_usd, 0.0)

    @property
    def paid(self) -> bool:
        return self.outstanding_tokens == 0 and self.outstanding_cost_usd <= _EPS

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class OverdraftStatistics:
    granted: int
    denied: int
    outstanding_tokens: int
    outstanding_cost_usd: float


@dataclass(frozen=True, slots=True)
class _Overshoot:
    scope: ScopeState
    tokens: int
    cost_usd: float


class OverdraftLedger:
    """Grants, records and repays overdrafts per scope (see module docstring)."""

    def __init__(
        self, tracker: Tracker, store: Store, config: OverdraftConfig,
        events: EventBus | None = None,
    ) -> None:
        self.tracker = tracker
        self.store = store
        self.config = config
        self.events = events
        self._records: dict[str, OverdraftRecord] = {}
        self._period: dict[str, int] = {}
        self._seq = 0
        self._granted = 0
        self._denied = 0

    async def open(self) -> None:
        """Load recorded overdrafts (a restart keeps used grace and unpaid debt; a task
        scope's only within its session)."""
        for key, value in (await self.store.list_state("overdraft")).items():
            rec = OverdraftRecord(**value)
            self._seq = max(self._seq, int(key.rsplit(":", 1)[-1]))
            if rec.scope.startswith("task:") and rec.session_id not in (
                    "", self.tracker.session_id):
                continue
            self._records[key] = rec
            self._period[rec.scope] = max(self._period.get(rec.scope, 0), rec.period)

    # -- questions -----------------------------------------------------------------

    def records(self, scope: str | None = None) -> list[OverdraftRecord]:
        return [r for r in self._records.values() if scope is None or r.scope == scope]

    def denial_reason(self, scope: str, tokens: int, cost_usd: float) -> str | None:
        """Why an overshoot of ``tokens``/``cost_usd`` on ``scope`` is refused (None = ok)."""
        period = self._period.get(scope, 0)
        for rec in self.records(scope):
            if rec.period < period and not rec.paid:
                return f"a previous overdraft on {scope} is unpaid"
            if rec.period == period:
                return f"the grace of {scope} was already used"
        if tokens > self.config.tokens:
            return f"{tokens} tokens over {scope} exceeds the grace of {self.config.tokens}"
        if cost_usd > self.config.cost_usd + _EPS:
            return (f"${cost_usd:.4f} over {scope} exceeds the grace of "
                    f"${self.config.cost_usd:.2f}")
        return None

    def statistics(self) -> OverdraftStatistics:
        recs = list(self._records.values())
        return OverdraftStatistics(
            self._granted, self._denied,
            sum(r.outstanding_tokens for r in recs),
            sum(r.outstanding_cost_usd for r in recs),
        )

    # -- granting ------------------------------------------------------------------

    async def reserve(
        self, task_id: str, *, model: str, tokens: int, cost_usd: float, operation: str,
        error: BudgetExceededError,
    ) -> Reservation:
        """Reserve past the limit within the grace, or raise :class:`OverdraftDeniedError`.

        ``error`` is what :meth:`Tracker.reserve` raised for the same request.
        The check and the reservation happen without an ``await`` in between,
        so concurrent agents cannot both take the same grace.
        """
        overshoots = self._overshoots(task_id, model, tokens, cost_usd, error)
        for o in overshoots:
            reason = self.denial_reason(o.scope.name, o.tokens, o.cost_usd)
            if reason is not None:
                await self._deny(task_id, operation, reason, error)
        reservation = self._reserve_unchecked(task_id, model, tokens, cost_usd)
        granted = [self._grant(task_id, operation, o) for o in overshoots]
        for rec in granted:
            await self.store.put_state("overdraft", rec.key, rec.to_dict())
            if self.events is not None:
                self.events.emit(
                    "overdraft_granted",
                    f"overdraft of {rec.tokens} tokens / ${rec.cost_usd:.4f} on {rec.scope} "
                    f"to finish {operation}",
                    task_id=task_id, level="warning", scope=rec.scope, tokens=rec.tokens,
                    cost_usd=rec.cost_usd, operation=operation,
                )
        return reservation

    async def _deny(
        self, task_id: str, operation: str, reason: str, error: BudgetExceededError
    ) -> None:
        self._denied += 1
        if self.events is not None:
            self.events.emit("overdraft_denied", reason, task_id=task_id, level="warning",
                             operation=operation, scope=error.scope, dimension=error.dimension)
        raise OverdraftDeniedError(task_id, reason) from error

    def _overshoots(
        self, task_id: str, model: str, tokens: int, cost_usd: float, error: BudgetExceededError
    ) -> list[_Overshoot]:
        if error.dimension not in ("tokens", "cost_usd") and not error.dimension.startswith(
            "tokens:"
        ):
            self._denied += 1
            raise OverdraftDeniedError(
                task_id, f"no overdraft grace for {error.dimension} of {error.scope}"
            ) from error
        out: list[_Overshoot] = []
        for scope in self.tracker.scopes(task_id):
            over_t = 0
            lim = scope.limits.tokens
            if lim is not None:
                over_t = scope.totals.tokens + scope.reserved_tokens + tokens - lim
            mlim = scope.limits.tokens_by_model.get(model)  # type: ignore[call-overload]
            if mlim is not None:
                used = scope.used(f"tokens:{model}") + scope.reserved_by_model.get(model, 0)
                over_t = max(over_t, used + tokens - mlim)
            over_c = 0.0
            clim = scope.limits.cost_usd
            if clim is not None:
                over_c = scope.totals.cost_usd + scope.reserved_cost + cost_usd - clim
            if over_t > 0 or over_c > _EPS:
                out.append(_Overshoot(scope, max(over_t, 0), max(over_c, 0.0)))
        return out

    def _reserve_unchecked(
        self, task_id: str, model: str, tokens: int, cost_usd: float
    ) -> Reservation:
        scopes = self.tracker.scopes(task_id)
        for s in scopes:
            s.reserved_tokens += tokens
            s.reserved_cost += cost_usd
            s.reserved_by_model[model] = s.reserved_by_model.get(model, 0) + tokens
        return Reservation(task_id, model, tokens, cost_usd, tuple(s.name for s in scopes))

    def _grant(self, task_id: str, operation: str, o: _Overshoot) -> OverdraftRecord:
        self._seq += 1
        self._granted += 1
        key = f"{o.scope.name}:{self._seq}"
        rec = OverdraftRecord(key, o.scope.name, task_id, operation,
                              self._period.get(o.scope.name, 0), o.tokens, round(o.cost_usd, 9),
                              session_id=self.tracker.session_id)
        self._records[key] = rec
        _log.info("overdraft_recorded", **rec.to_dict())
        return rec

    # -- repaying ------------------------------------------------------------------

    async def repay(self, scope: str, tokens: int, cost_usd: float) -> tuple[int, float]:
        """Budget was added to ``scope``: repay outstanding overdrafts first, open a new period.

        Returns how many tokens and dollars went to repayment.
        """
        paid_t, paid_c = 0, 0.0
        for rec in sorted(self.records(scope), key=lambda r: r.key):
            if rec.paid:
                continue
            t = min(tokens - paid_t, rec.outstanding_tokens)
            c = min(cost_usd - paid_c, rec.outstanding_cost_usd)
            rec.repaid_tokens += max(t, 0)
            rec.repaid_cost_usd += max(c, 0.0)
            paid_t += max(t, 0)
            paid_c += max(c, 0.0)
            await self.store.put_state("overdraft", rec.key, rec.to_dict())
        self._period[scope] = self._period.get(scope, 0) + 1
        if paid_t or paid_c:
            _log.info("overdraft_repaid", scope=scope, tokens=paid_t, cost_usd=paid_c)
        return paid_t, paid_c
