"""Charging usage to nested scopes and answering "how much is left" (R1.2, R1.5, R2.5, R2.6).

Every event is charged to its task, its session and its day; the tightest
scope decides whether a call may proceed.  Calls in flight hold a
*reservation* of their estimate, so concurrent agents cannot all pass the
same check and overspend together.  Totals are kept in memory for speed and
written through to the durable store; a new session on the same store starts
from what the day has already spent.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import anyio
import structlog

from scheduler.budget._profile import TaskProfile, day_limits
from scheduler.config._config import AlertsConfig, Limits, VibeConfig
from scheduler.core._clock import SystemWallClock, WallClock
from scheduler.core._errors import BudgetExceededError, StoreUnavailableError, VibeEngineError
from scheduler.core._usage import Totals, UsageEvent
from scheduler.store import Store
from scheduler.store._ledger import BudgetLedger, Hold, ScopeLimit

_log = structlog.get_logger("vibe_engine.tracker")

Level = Literal["warning", "critical", "exceeded"]
LEVELS: tuple[Level, ...] = ("warning", "critical", "exceeded")
#: Dimensions read from :class:`Totals` by attribute name.
COUNTED = (
    "tokens", "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens",
    "cost_usd", "file_edits", "shell_commands", "dangerous_commands",
)


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold crossed by one dimension of one scope (fired once per crossing)."""

    scope: str
    dimension: str
    level: Level
    used: float
    limit: float

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit else float("inf")


@dataclass(frozen=True, slots=True)
class Remaining:
    """R2.5: what is left of a task's budget (``None`` = unlimited)."""

    tokens: int | None
    actions: int | None
    cost_usd: float | None
    time_s: float | None
    avg_tokens_per_action: float


@dataclass(slots=True)
class Reservation:
    """An in-flight estimate held against every scope of a task."""

    task_id: str
    model: str
    tokens: int
    cost_usd: float
    scopes: tuple[str, ...]
    active: bool = True
    #: The shared hold on the session and day scopes when the store is a BudgetLedger.
    hold: Hold | None = None


@dataclass(slots=True)
class ScopeState:
    """Limits, totals, reservations and fired alerts of one scope."""

    name: str
    limits: Limits
    totals: Totals = field(default_factory=Totals)
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    reserved_by_model: dict[str, int] = field(default_factory=dict)
    fired: set[tuple[str, Level]] = field(default_factory=set)
    started_at: float = 0.0

    def used(self, dimension: str) -> float:
        if dimension.startswith("tokens:"):
            return self.totals.tokens_by_model.get(dimension[7:], 0)
        value: float = getattr(self.totals, dimension)
        return value

    def limit(self, dimension: str) -> float | None:
        if dimension.startswith("tokens:"):
            cap: int | None = self.limits.tokens_by_model.get(dimension[7:])  # type: ignore[call-overload]
            return cap
        value: float | None = getattr(self.limits, dimension)
        return value

    def dimensions(self) -> Iterator[str]:
        for d in COUNTED:
            if getattr(self.limits, d) is not None:
                yield d
        for m in self.limits.tokens_by_model:
            yield f"tokens:{m}"


@dataclass(slots=True)
class _TaskEntry:
    profile: TaskProfile
    agent: str
    scope: ScopeState
    actions: int = 0
    last_json_write: float = float("-inf")
    status: str = "running"


class Tracker:
    """Charges usage to task ⊂ session ⊂ day and answers budget questions."""

    def __init__(
        self,
        store: Store,
        config: VibeConfig,
        *,
        session_id: str,
        wall: WallClock | None = None,
        clock: Callable[[], float] = anyio.current_time,
        state_dir: Path | None = None,
        usage_json_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.config = config
        self.session_id = session_id
        self.wall = wall or SystemWallClock()
        self._clock = clock
        self._state_dir = state_dir
        self._json_interval = usage_json_interval_s
        self.session = ScopeState(f"session:{session_id}", config.budgets.session)
        self._days: dict[str, ScopeState] = {}
        self._tasks: dict[str, _TaskEntry] = {}
        self._seq = 0
        # a restarted orchestrator reusing a session id must not collide with the ids it
        # recorded before (they would be dropped as duplicates): ids carry a per-run nonce
        self._run = secrets.token_hex(4)

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Load the session's and today's totals from the store (R1.5)."""
        self.session.totals = await self.store.totals(self.session.name)
        self._crossings(self.session)  # thresholds passed before a restart fired then (R3.1)
        await self._ensure_day(self.today())

    def today(self) -> date:
        return self.wall.now().date()

    async def _ensure_day(self, day: date) -> ScopeState:
        key = day.isoformat()
        state = self._days.get(key)
        if state is None:
            state = ScopeState(f"day:{key}", day_limits(self.config, day))
            state.totals = await self.store.totals(state.name)
            self._crossings(state)  # already passed: fired by an earlier process
            self._days[key] = state
        return state

    def day_scope(self, day: date | None = None) -> ScopeState:
        key = (day or self.today()).isoformat()
        state = self._days.get(key)
        if state is None:
            # a day not loaded yet (midnight passed): start empty, charge() reloads it
            state = ScopeState(f"day:{key}", day_limits(self.config, day or self.today()))
            self._days[key] = state
        return state

    async def start_task(self, task_id: str, profile: TaskProfile, *, agent: str = "") -> None:
        """Register a task; a task seen before resumes from its recorded totals."""
        scope = ScopeState(f"task:{task_id}", profile.limits, started_at=self._clock())
        scope.totals = await self.store.totals(scope.name)
        self._crossings(scope)  # a resumed task's passed thresholds fired in its earlier run
        self._tasks[task_id] = _TaskEntry(profile, agent, scope, actions=scope.totals.calls)
        await self._ensure_day(self.today())

    def finish_task(self, task_id: str, status: str = "completed") -> None:
        entry = self._tasks.get(task_id)
        if entry is not None:
            entry.status = status
            self.write_usage_json(task_id)

    def task_scope(self, task_id: str) -> ScopeState:
        try:
            return self._tasks[task_id].scope
        except KeyError:
            raise VibeEngineError(f"unknown task {task_id!r}: call start_task first") from None

    def profile(self, task_id: str) -> TaskProfile:
        return self._tasks[task_id].profile

    def scopes(self, task_id: str) -> tuple[ScopeState, ScopeState, ScopeState]:
        return (self.task_scope(task_id), self.session, self.day_scope())

    # -- admission -----------------------------------------------------------------

    def check(
        self, task_id: str, *, model: str = "", tokens: int = 0, cost_usd: float = 0.0,
        file_edits: int = 0, shell_commands: int = 0, dangerous_commands: int = 0,
    ) -> None:
        """Raise :class:`BudgetExceededError` if the request would cross any limit."""
        task = self.task_scope(task_id)
        limit = task.limits.time_s
        if limit is not None:
            elapsed = self._clock() - task.started_at
            if elapsed >= limit:
                raise BudgetExceededError(task.name, "time_s", elapsed, limit)
        wanted = {
            "tokens": tokens, "cost_usd": cost_usd, "file_edits": file_edits,
            "shell_commands": shell_commands, "dangerous_commands": dangerous_commands,
        }
        for scope in self.scopes(task_id):
            for dim, amount in wanted.items():
                if not amount:
                    continue
                lim = scope.limit(dim)
                if lim is None:
                    continue
                held = (
                    scope.reserved_tokens if dim == "tokens"
                    else scope.reserved_cost if dim == "cost_usd" else 0
                )
                used = scope.used(dim) + held
                if used + amount > lim:
                    raise BudgetExceededError(scope.name, dim, used, lim, amount)
            if model and tokens:
                mlim = scope.limits.tokens_by_model.get(model)  # type: ignore[call-overload]
                if mlim is not None:
                    used = scope.used(f"tokens:{model}") + scope.reserved_by_model.get(model, 0)
                    if used + tokens > mlim:
                        raise BudgetExceededError(
                            scope.name, f"tokens:{model}", used, mlim, tokens
                        )

    def reserve(self, task_id: str, *, model: str, tokens: int, cost_usd: float) -> Reservation:
        """Check, then hold ``tokens``/``cost_usd`` against every scope until charged."""
        self.check(task_id, model=model, tokens=tokens, cost_usd=cost_usd)
        scopes = self.scopes(task_id)
        for s in scopes:
            s.reserved_tokens += tokens
            s.reserved_cost += cost_usd
            s.reserved_by_model[model] = s.reserved_by_model.get(model, 0) + tokens
        return Reservation(task_id, model, tokens, cost_usd, tuple(s.name for s in scopes))

    async def reserve_shared(
        self, task_id: str, *, model: str, tokens: int, cost_usd: float
    ) -> Reservation:
        """:meth:`reserve`, and across processes when the store is a :class:`BudgetLedger`.

        With a shared store (Redis) the same amounts are also held atomically
        against the session and day scopes of *every* orchestrator sharing
        them ("charge if within budget"), and the local session/day totals are
        refreshed from the shared ones.  Raises :class:`BudgetExceededError`,
        or :class:`StoreUnavailableError` while the ledger is unreachable and
        fail-closed.  With any other store this is exactly :meth:`reserve`.
        """
        reservation = self.reserve(task_id, model=model, tokens=tokens, cost_usd=cost_usd)
        if not isinstance(self.store, BudgetLedger):
            return reservation
        shared = (self.session, self.day_scope())
        limits = tuple(
            ScopeLimit(s.name, s.limits.tokens, s.limits.tokens_by_model.get(model),  # type: ignore[call-overload]
                       s.limits.cost_usd)
            for s in shared
        )
        try:
            hold = await self._hold_shared(
                self.store, f"{self.next_event_id(task_id)}:hold", limits, model, tokens, cost_usd
            )
        except BaseException:
            self.cancel(reservation)
            raise
        reservation.hold = hold
        for s in shared:
            if s.name in hold.totals:
                s.totals = hold.totals[s.name]
        return reservation

    async def _hold_shared(
        self, ledger: BudgetLedger, hold_id: str, limits: tuple[ScopeLimit, ...], model: str,
        tokens: int, cost_usd: float,
    ) -> Hold:
        """Fail-closed: while the ledger is unreachable, wait (backing off) up to
        ``distributed.unavailable_wait_s`` for it to come back, then raise."""
        deadline = self._clock() + self.config.distributed.unavailable_wait_s
        delay = 0.05
        while True:
            try:
                return await ledger.try_reserve(
                    hold_id, limits, model=model, tokens=tokens, cost_usd=cost_usd
                )
            except StoreUnavailableError:
                if self._clock() + delay > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def renew_hold(self, reservation: Reservation) -> bool:
        """Keep the reservation's shared hold alive while its call waits (``True`` without
        one); ``False`` when the hold already expired."""
        hold = reservation.hold
        renew = getattr(self.store, "renew", None)  # optional in the BudgetLedger protocol
        if hold is None or not reservation.active or renew is None:
            return True
        return bool(await renew(hold))

    async def release(self, reservation: Reservation) -> None:
        """:meth:`cancel`, also releasing the shared hold (a dropped hold expires anyway)."""
        self.cancel(reservation)
        hold, reservation.hold = reservation.hold, None
        if hold is not None and isinstance(self.store, BudgetLedger):
            await self.store.release(hold)

    def cancel(self, reservation: Reservation) -> None:
        """Return a reservation that will not be charged (call failed before usage)."""
        if not reservation.active:
            return
        reservation.active = False
        for s in self._scope_states(reservation):
            s.reserved_tokens -= reservation.tokens
            s.reserved_cost -= reservation.cost_usd
            s.reserved_by_model[reservation.model] -= reservation.tokens

    def _scope_states(self, reservation: Reservation) -> list[ScopeState]:
        out: list[ScopeState] = []
        for name in reservation.scopes:
            if name.startswith("task:"):
                out.append(self.task_scope(reservation.task_id))
            elif name.startswith("session:"):
                out.append(self.session)
            else:
                out.append(self._days[name[4:]])
        return out

    # -- charging ------------------------------------------------------------------

    def next_event_id(self, task_id: str) -> str:
        self._seq += 1
        return f"{self.session_id}:{self._run}:{task_id}:{self._seq}"

    def make_event(
        self, task_id: str, *, model: str = "", usage: Any = None, cost_usd: float = 0.0,
        file_edits: int = 0, shell_commands: int = 0, dangerous_commands: int = 0,
        event_id: str | None = None,
    ) -> UsageEvent:
        now = self.wall.now()
        entry = self._tasks.get(task_id)
        kwargs: dict[str, Any] = {}
        if usage is not None:
            kwargs["usage"] = usage
        return UsageEvent(
            event_id=event_id or self.next_event_id(task_id),
            task_id=task_id,
            session_id=self.session_id,
            day=now.date().isoformat(),
            at=now.timestamp(),
            agent=entry.agent if entry else "",
            model=model,
            cost_usd=cost_usd,
            file_edits=file_edits,
            shell_commands=shell_commands,
            dangerous_commands=dangerous_commands,
            task_type=entry.profile.task_type if entry else "",
            **kwargs,
        )

    async def charge(
        self, event: UsageEvent, reservation: Reservation | None = None
    ) -> list[Crossing]:
        """Record ``event`` durably, add it to every scope, return new threshold crossings."""
        hold = None
        if reservation is not None:
            self.cancel(reservation)
            hold, reservation.hold = reservation.hold, None
        if hold is not None and isinstance(self.store, BudgetLedger):
            fresh = await self.store.settle(event, hold)  # record + release, atomically
        else:
            fresh = await self.store.record(event)
        if not fresh:
            return []
        entry = self._tasks.get(event.task_id)
        touched: list[ScopeState] = []
        if entry is not None:
            entry.scope.totals.add(event)
            if event.model:
                entry.actions += 1
            touched.append(entry.scope)
        if event.session_id == self.session_id:
            self.session.totals.add(event)
            touched.append(self.session)
        day = self._days.get(event.day)
        if day is None:
            # first event of a new day: the loaded totals already include it
            day = await self._ensure_day(date.fromisoformat(event.day))
        else:
            day.totals.add(event)
        touched.append(day)
        crossings: list[Crossing] = []
        for s in touched:
            crossings.extend(self._crossings(s))
        if entry is not None and self._state_dir is not None:
            now = self._clock()
            if now - entry.last_json_write >= self._json_interval or crossings:
                entry.last_json_write = now
                self.write_usage_json(event.task_id)
        return crossings

    def _thresholds(self, scope: ScopeState, dim: str) -> dict[Level, float]:
        a: AlertsConfig = self.config.alerts
        t: dict[Level, float] = {"warning": a.warning, "critical": a.critical,
                                 "exceeded": a.exceeded}
        if dim == "cost_usd" and scope.limits.cost_warning_usd and scope.limits.cost_usd:
            t["warning"] = min(scope.limits.cost_warning_usd / scope.limits.cost_usd, a.critical)
        return t

    def _crossings(self, scope: ScopeState) -> list[Crossing]:
        out: list[Crossing] = []
        for dim in scope.dimensions():
            lim = scope.limit(dim)
            if not lim:
                continue
            used = scope.used(dim)
            for level, frac in self._thresholds(scope, dim).items():
                if used >= lim * frac and (dim, level) not in scope.fired:
                    scope.fired.add((dim, level))
                    out.append(Crossing(scope.name, dim, level, used, lim))
        return out

    def time_crossings(self, task_id: str) -> list[Crossing]:
        """Threshold crossings of the task's wall-time budget, as of now."""
        scope = self.task_scope(task_id)
        lim = scope.limits.time_s
        if not lim:
            return []
        used = self._clock() - scope.started_at
        out: list[Crossing] = []
        for level, frac in self._thresholds(scope, "time_s").items():
            if used >= lim * frac and ("time_s", level) not in scope.fired:
                scope.fired.add(("time_s", level))
                out.append(Crossing(scope.name, "time_s", level, used, lim))
        return out

    def raise_limits(self, scope: ScopeState, extra: Limits) -> None:
        """Add to a scope's limits (a person added budget) and re-arm passed thresholds."""
        data = scope.limits.model_dump()
        for name in extra.model_fields_set:
            add = getattr(extra, name)
            if name == "tokens_by_model":
                merged = dict(data["tokens_by_model"])
                for m, v in add.items():
                    merged[m] = merged.get(m, 0) + v
                data[name] = merged
            elif add is not None:
                data[name] = (data[name] or 0) + add
        scope.limits = Limits.model_validate(data)
        for dim, level in list(scope.fired):
            lim = scope.limit(dim) if dim != "time_s" else scope.limits.time_s
            used = scope.used(dim) if dim != "time_s" else self._clock() - scope.started_at
            if lim and used < lim * self._thresholds(scope, dim)[level]:
                scope.fired.discard((dim, level))

    # -- questions -----------------------------------------------------------------

    def fraction_used(self, task_id: str) -> float:
        """The largest used/limit ratio over every dimension of the task's scopes."""
        worst = 0.0
        for scope in self.scopes(task_id):
            for dim in scope.dimensions():
                lim = scope.limit(dim)
                if lim:
                    worst = max(worst, scope.used(dim) / lim)
        return worst

    def token_fraction(self, task_id: str) -> float:
        """Task tokens used ÷ task token limit (0 when unlimited); R5.2 demotion input."""
        scope = self.task_scope(task_id)
        lim = scope.limits.tokens
        return scope.totals.tokens / lim if lim else 0.0

    def remaining(self, task_id: str) -> Remaining:
        """R2.5: tokens, further actions, cost and time left for a task."""
        entry = self._tasks[task_id]
        tokens_left: int | None = None
        cost_left: float | None = None
        for scope in self.scopes(task_id):
            if scope.limits.tokens is not None:
                left = max(scope.limits.tokens - scope.totals.tokens - scope.reserved_tokens, 0)
                tokens_left = left if tokens_left is None else min(tokens_left, left)
            if scope.limits.cost_usd is not None:
                c = max(scope.limits.cost_usd - scope.totals.cost_usd - scope.reserved_cost, 0.0)
                cost_left = c if cost_left is None else min(cost_left, c)
        actions = entry.actions
        avg = entry.scope.totals.tokens / actions if actions else 0.0
        actions_left = None if tokens_left is None else (
            int(tokens_left // avg) if avg else None
        )
        time_left = None
        if entry.scope.limits.time_s is not None:
            time_left = max(entry.scope.limits.time_s - (self._clock() - entry.scope.started_at),
                            0.0)
        return Remaining(tokens_left, actions_left, cost_left, time_left, avg)

    def usage_document(self, task_id: str) -> dict[str, Any]:
        entry = self._tasks[task_id]
        return {
            "task_id": task_id,
            "session_id": self.session_id,
            "agent": entry.agent,
            "task_type": entry.profile.task_type,
            "complexity": entry.profile.complexity,
            "status": entry.status,
            "usage": entry.scope.totals.to_dict(),
            "budget": entry.scope.limits.model_dump(mode="json", exclude_none=True),
            "timestamp": self.wall.now().isoformat(),
        }

    def write_usage_json(self, task_id: str) -> Path | None:
        """Write ``<state_dir>/tasks/<task_id>/usage.json`` atomically (R2.6)."""
        if self._state_dir is None or task_id not in self._tasks:
            return None
        folder = self._state_dir / "tasks" / task_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "usage.json"
        tmp = folder / "usage.json.tmp"
        tmp.write_text(json.dumps(self.usage_document(task_id), indent=2), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def tasks(self) -> list[str]:
        return list(self._tasks)
