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

Several processes on one store (orchestrators, ``serve`` replicas) share the
day scope, a shared session and a ``serve`` key's task scopes, so the grace
is claimed in the store: a grant's record key names its scope and period (and
the session, for a task scope that is per session), and is written with
``put_state_if_absent`` -- of all the processes, one gets it; the others are
denied ("already used by another process").  A period begun by adding budget
is recorded too (kind ``overdraft_period``), so every process claims in it.
The overdraft's reservation is held in the store like any other
(``Tracker.hold_over``): on Redis or a shared SQLite file other processes see it,
and together they
never pass a limit by more than one grace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from scheduler.budget import Reservation, ScopeState, Tracker
from scheduler.config import OverdraftConfig
from scheduler.core import (
    BudgetExceededError,
    EventBus,
    OverdraftDeniedError,
    StoreError,
    get_logger,
)
from scheduler.store import Store, put_state_if_absent

_log = get_logger("vibe_engine.overdraft")
_EPS = 1e-12
KIND = "overdraft"
#: The period of a scope (budget was added to it), kept where every process sees it.
PERIOD = "overdraft_period"


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
    #: The scope spans the store (a ``serve`` key's task): its grace is every session's.
    shared: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> OverdraftRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # type: ignore[arg-type]

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
        self._granted = 0
        self._denied = 0

    async def open(self) -> None:
        """Load recorded overdrafts (a restart keeps used grace and unpaid debt; a task
        scope's only within its session)."""
        await self._load()

    async def _load(self) -> None:
        """Take in what every process on the store granted and repaid so far."""
        for key, value in (await self.store.list_state(KIND)).items():
            try:
                rec = OverdraftRecord.from_dict(value)
            except TypeError:
                _log.warning("overdraft_record_unreadable", key=key)
                continue
            if self._grace_key(rec.scope, rec.shared, rec.session_id) != self._grace_key(
                    rec.scope, rec.shared):
                continue  # a task scope's grace in another session
            known = self._records.setdefault(key, rec)
            known.repaid_tokens = max(known.repaid_tokens, rec.repaid_tokens)
            known.repaid_cost_usd = max(known.repaid_cost_usd, rec.repaid_cost_usd)
            # repaid at all: budget was added since, which began the next period
            self._bump(rec.scope, rec.period + (1 if rec.repaid_tokens or
                                                rec.repaid_cost_usd > _EPS else 0))
        for key, value in (await self.store.list_state(PERIOD)).items():
            scope = str(value.get("scope", ""))
            if key == self._grace_key(scope, bool(value.get("shared", False))):
                self._bump(scope, int(value.get("period", 0)))

    def _bump(self, scope: str, period: int) -> None:
        if period > self._period.get(scope, 0):
            self._period[scope] = period

    def _grace_key(self, scope: str, shared: bool, session_id: str | None = None) -> str:
        """Whose grace ``scope``'s is: a task scope's is its session's unless it spans the
        store (a ``serve`` key), every other scope's is the store's."""
        if scope.startswith("task:") and not shared:
            session = self.tracker.session_id if session_id is None else session_id
            return f"{scope}@{session or self.tracker.session_id}"
        return scope

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
                return (f"the grace of {scope} was already used (task {rec.task_id}, "
                        f"session {rec.session_id or '?'})")
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
        The check, the local reservation and the grant's record happen without an
        ``await`` in between, so concurrent agents of this process cannot both take
        the same grace; the grant is then claimed in the store, so no other process
        takes it either.
        """
        try:
            await self._load()  # what other processes granted or repaid since
        except StoreError as exc:  # unknown whether another process took the grace
            await self._deny(task_id, operation, f"the grace cannot be checked: {exc}", error)
        overshoots = self._overshoots(task_id, model, tokens, cost_usd, error)
        for o in overshoots:
            reason = self.denial_reason(o.scope.name, o.tokens, o.cost_usd)
            if reason is not None:
                await self._deny(task_id, operation, reason, error)
        reservation = self.tracker.reserve_over(task_id, model=model, tokens=tokens,
                                                cost_usd=cost_usd)
        granted = [self._grant(task_id, operation, o) for o in overshoots]
        try:
            reason = await self._claim(granted)
            if reason is None:
                reason = await self._hold(reservation, granted)
        except BaseException:
            self._undo(reservation, granted)
            raise
        if reason is not None:
            self._undo(reservation, granted)
            await self._deny(task_id, operation, reason, error)
        self._granted += len(granted)
        for rec in granted:
            _log.info("overdraft_recorded", **rec.to_dict())
            if self.events is not None:
                self.events.emit(
                    "overdraft_granted",
                    f"overdraft of {rec.tokens} tokens / ${rec.cost_usd:.4f} on {rec.scope} "
                    f"to finish {operation}",
                    task_id=task_id, level="warning", scope=rec.scope, tokens=rec.tokens,
                    cost_usd=rec.cost_usd, operation=operation,
                )
        return reservation

    async def _claim(self, granted: list[OverdraftRecord]) -> str | None:
        """Write each grant's record unless another process holds that scope's grace of
        this period; why not (None: all claimed; a failure unclaims the others)."""
        claimed: list[OverdraftRecord] = []
        reason = None
        for rec in granted:
            try:
                if await put_state_if_absent(self.store, KIND, rec.key, rec.to_dict()):
                    claimed.append(rec)
                    continue
                other = await self.store.get_state(KIND, rec.key) or {}
                reason = (f"the grace of {rec.scope} was already used by another process "
                          f"(task {other.get('task_id', '?')}, session "
                          f"{other.get('session_id', '?')})")
            except StoreError as exc:
                reason = f"the grace of {rec.scope} could not be claimed: {exc}"
            break
        if reason is not None:
            for rec in claimed:
                await self.store.delete_state(KIND, rec.key)
        return reason

    async def _hold(self, reservation: Reservation, granted: list[OverdraftRecord]
                    ) -> str | None:
        """Hold the reservation across processes within one grace; why not (None: held)."""
        grace = {rec.scope: (self.config.tokens, self.config.cost_usd) for rec in granted}
        try:
            await self.tracker.hold_over(reservation, grace)
        except (BudgetExceededError, StoreError) as exc:
            for rec in granted:  # not used after all: the grace stays free
                await self.store.delete_state(KIND, rec.key)
            if isinstance(exc, StoreError):
                raise  # unreachable past the wait, as for any other call
            return f"{exc.scope} would pass its limit by more than the grace across processes"
        return None

    def _undo(self, reservation: Reservation, granted: list[OverdraftRecord]) -> None:
        self.tracker.cancel(reservation)
        for rec in granted:
            self._records.pop(rec.key, None)

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
            if over_t <= 0 and over_c <= _EPS and scope.name == error.scope:
                # over only as the store counts it (other processes' use and holds)
                over = error.used + error.requested - error.limit
                over_t, over_c = (0, over) if error.dimension == "cost_usd" else (
                    int(over + 0.5), 0.0)
            if over_t > 0 or over_c > _EPS:
                out.append(_Overshoot(scope, max(over_t, 0), max(over_c, 0.0)))
        return out

    def _grant(self, task_id: str, operation: str, o: _Overshoot) -> OverdraftRecord:
        name, shared = o.scope.name, o.scope.shared
        period = self._period.get(name, 0)
        # one key per grace and period: the claim every process makes for it
        key = f"{self._grace_key(name, shared)}#{period}"
        rec = OverdraftRecord(key, name, task_id, operation, period, o.tokens,
                              round(o.cost_usd, 9), session_id=self.tracker.session_id,
                              shared=shared)
        self._records[key] = rec
        return rec

    # -- repaying ------------------------------------------------------------------

    async def repay(self, scope: str, tokens: int, cost_usd: float, *,
                    shared: bool = False) -> tuple[int, float]:
        """Budget was added to ``scope``: repay outstanding overdrafts first, open a new period
        (for every process: ``shared``, the scope spans the store).

        Returns how many tokens and dollars went to repayment.
        """
        try:
            await self._load()  # the scope's debt may be another process's grant
        except StoreError as exc:
            _log.warning("overdraft_records_unreadable", scope=scope, error=str(exc))
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
            await self.store.put_state(KIND, rec.key, rec.to_dict())
        period = self._period.get(scope, 0) + 1
        self._period[scope] = period
        key = self._grace_key(scope, shared)
        stored = await self.store.get_state(PERIOD, key) or {}
        if int(stored.get("period", 0)) < period:  # never back: a later one stays
            await self.store.put_state(PERIOD, key, {"scope": scope, "period": period,
                                                     "shared": shared})
        if paid_t or paid_c:
            _log.info("overdraft_repaid", scope=scope, tokens=paid_t, cost_usd=paid_c)
        return paid_t, paid_c
