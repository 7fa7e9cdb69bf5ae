"""Holding a call's estimate until its usage is charged (R1.2 under concurrency).

Calls in flight hold a *reservation* of their estimate against every scope of
their task, so concurrent agents cannot all pass the same check and overspend
together.  When the store is a shared :class:`BudgetLedger` (Redis, or a SQLite
file several processes open) the session and day amounts are also held there,
atomically across processes.
A reservation ends settled (the call's usage is recorded), or released.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from scheduler.budget._checks import check_amounts, check_call
from scheduler.budget._scope_state import ScopeState
from scheduler.budget._scopes import Scopes
from scheduler.core import (
    BudgetExceededError,
    StoreError,
    StoreUnavailableError,
    UsageEvent,
)
from scheduler.store import Store, record_and_delete_state, scopes_of
from scheduler.store._base import OPEN_CALL
from scheduler.store._ledger import BudgetLedger, Hold, Recorded, ScopeLimit, Settled


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
    #: The id the call's usage event will carry ("" until the call is opened).
    event_id: str = ""
    #: True while an ``open_call`` record of it is in the store (see ``_open_calls``).
    durable: bool = False
    #: The scopes named by ``scopes`` themselves, when the reserving code has them
    #: (the scopes the amounts were added to; no lookup by name when they go back).
    held: tuple[ScopeState, ...] = field(default=(), repr=False, compare=False)

    @property
    def day(self) -> str:
        """The calendar day whose budget admitted the call (ISO date): its charge counts
        toward that day even when the call ends after midnight, so each day's budget pays
        for what it admitted and a new day starts from nothing."""
        return self.scopes[-1][4:]  # ``Scopes.of_task`` puts the day's scope last


class Reservations:
    """Checks requests against the scopes and holds, settles and releases their estimates."""

    def __init__(
        self, scopes: Scopes, store: Store, *, unavailable_wait_s: float,
        clock: Callable[[], float], hold_id: Callable[[str], str],
    ) -> None:
        self._scopes = scopes
        self._store = store
        # once: isinstance against a runtime-checkable protocol inspects every member
        self._ledger: BudgetLedger | None = store if isinstance(store, BudgetLedger) else None
        #: A ledger that settles a hold and deletes a state record in one transaction
        #: (SQLite, Redis): a call's settle is then one write, its open_call record with it.
        #: False (``SqliteStore``): a call no shared scope limits is not held -- nothing to
        #: check, so no write (Redis holds every call: its totals come back with the hold).
        self._hold_unlimited = bool(getattr(store, "hold_unlimited", True))
        self._settle_and_delete: Callable[[UsageEvent, Hold, str, str], Awaitable[int]] | None = (
            getattr(store, "settle_and_delete_state", None) if self._ledger is not None else None)
        #: A ledger that versions its totals (``RedisStore``): every event is recorded
        #: through it, so the scopes know which snapshot of the totals holds it.
        self._commit: Callable[[UsageEvent, Hold | None, str | None],
                               Awaitable[Recorded | Settled]] | None = (
            getattr(store, "commit", None) if self._ledger is not None else None)
        self._unavailable_wait_s = unavailable_wait_s
        self._clock = clock
        self._hold_id = hold_id
        #: Set (and replaced) when held amounts go back (see :meth:`wait_for_holds`); made
        #: by the first waiter, so a run in which nothing waits sets nothing.
        self._settled: anyio.Event | None = None

    def check(
        self, task_id: str, *, model: str = "", tokens: int = 0, cost_usd: float = 0.0,
        file_edits: int = 0, shell_commands: int = 0, dangerous_commands: int = 0,
        prompt_tokens: int = 0, completion_tokens: int = 0,
    ) -> tuple[ScopeState, ...]:
        """Raise :class:`BudgetExceededError` if the request would cross any limit; else
        return the scopes checked (the task's, innermost first, as :meth:`Scopes.of_task`).

        A model call (``prompt_tokens`` or ``completion_tokens`` given) is also checked
        against the prompt and completion limits, and refused once a cache-read or
        cache-write limit is reached: how much of a prompt the cache serves is known only
        afterwards, so those limits stop the next call rather than this one (R1.1).  Those
        are checked in every scope before the other amounts asked for: a call over both
        kinds of limit is refused for its own (see ``Admission.admit``).
        """
        scopes = self._scopes.of_task(task_id)  # raises for a task not started
        task = scopes[0]
        limit = task.limits.time_s
        if limit is not None:
            elapsed = self._clock() - task.started_at
            if elapsed >= limit:
                raise BudgetExceededError(task.name, "time_s", elapsed, limit)
        call = bool(prompt_tokens or completion_tokens)
        # an operation's counts (a model call asks for none of them)
        ops = ((("file_edits", file_edits), ("shell_commands", shell_commands),
                ("dangerous_commands", dangerous_commands))
               if file_edits or shell_commands or dangerous_commands else ())
        per_model = model if tokens else ""
        # one pass over the scopes: a model call's own limits (prompt, completion, cache)
        # are checked in every scope before the other amounts, so an error over those is
        # raised only once every scope took the call's own (see ``Admission.admit``)
        over: BudgetExceededError | None = None
        for scope in scopes:
            caps = scope._caps  # read here, not through ``caps()``: every call asks
            if caps.limits is not scope.limits:
                caps = scope.caps_now()
            if not caps.of:
                continue  # an unlimited scope (often the session and the day)
            if call and caps.call:
                check_call(scope, caps.of, prompt_tokens, completion_tokens)
            if over is not None:
                continue
            try:
                check_amounts(scope, caps, tokens, cost_usd, ops, per_model)
            except BudgetExceededError as exc:
                if not call:
                    raise
                over = exc
        if over is not None:
            raise over
        return scopes

    def hold_ops(self, task_id: str, *, file_edits: int = 0, shell_commands: int = 0,
                 dangerous_commands: int = 0) -> Callable[[], None]:
        """Check an operation's counts, then hold them against every scope of the task
        until the function returned is called (at its charge, or when it failed):
        operations under way at once cannot all pass the same check."""
        scopes = self.check(task_id, file_edits=file_edits, shell_commands=shell_commands,
                            dangerous_commands=dangerous_commands)
        amounts = [(dim, n) for dim, n in (("file_edits", file_edits),
                   ("shell_commands", shell_commands),
                   ("dangerous_commands", dangerous_commands)) if n]
        limited = [s for s in scopes  # only where they are limited: nothing to check else
                   if any(s.caps().get(dim) is not None for dim, _ in amounts)]
        for s in limited:
            held = s.reserved_ops if s.reserved_ops is not None else {}
            for dim, n in amounts:
                held[dim] = held.get(dim, 0) + n
            s.reserved_ops = held
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            for s in limited:
                if s.reserved_ops is not None:
                    for dim, n in amounts:
                        s.reserved_ops[dim] -= n
            self._wake()

        return release

    def reserve(self, task_id: str, *, model: str, tokens: int, cost_usd: float,
                checked: bool = False) -> Reservation:
        """Check (unless the caller ``checked`` these amounts just now, with no wait
        since), then hold ``tokens``/``cost_usd`` against every scope until charged."""
        if checked:
            scopes = self._scopes.of_task(task_id)
        else:
            scopes = self.check(task_id, model=model, tokens=tokens, cost_usd=cost_usd)
        return self._held(task_id, model, tokens, cost_usd, scopes)

    def reserve_now(self, task_id: str, *, model: str, tokens: int, cost_usd: float,
                    prompt_tokens: int, completion_tokens: int) -> Reservation | None:
        """A model call's :meth:`check` (with its prompt and completion estimates) and
        :meth:`reserve` in one pass over the scopes, when this process alone decides and
        nothing needs awaiting: None, checking nothing, when the shared ledger takes a
        hold for the call or while today's totals (the day's, the task's per-day scope's)
        are not loaded yet (midnight passed: :meth:`reserve_shared` loads them).  Raises
        :class:`BudgetExceededError` over any limit."""
        if not self._scopes.ready_today(task_id):
            return None
        scopes = self.check(task_id, model=model, tokens=tokens, cost_usd=cost_usd,
                            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if self._ledger is not None and self._takes_hold(scopes, model):
            return None  # :meth:`reserve_shared` holds it (and checks it again)
        return self._held(task_id, model, tokens, cost_usd, scopes)

    def _held(self, task_id: str, model: str, tokens: int, cost_usd: float,
              scopes: tuple[ScopeState, ...]) -> Reservation:
        """Hold the amounts against ``scopes`` (the task's, as just checked)."""
        for s in scopes:
            s.reserved_tokens += tokens
            s.reserved_cost += cost_usd
            by_model = s.reserved_by_model
            by_model[model] = by_model[model] + tokens if model in by_model else tokens
        return Reservation(task_id, model, tokens, cost_usd, self._scopes.names(task_id, scopes),
                           held=scopes)

    async def reserve_shared(
        self, task_id: str, *, model: str, tokens: int, cost_usd: float, checked: bool = False,
    ) -> Reservation:
        """:meth:`reserve`, and across processes when the store is a :class:`BudgetLedger`.

        With a shared store (Redis, SQLite) the same amounts are also held atomically
        against the session and day scopes (and the task scopes spanning the store: the
        task's own, and its parent's)
        of *every* orchestrator sharing them ("charge if within budget"), and the
        local totals are refreshed from the shared ones when the ledger returns them with
        their version (Redis; SQLite does not; see :meth:`ScopeState.adopt`).
        Raises :class:`BudgetExceededError`,
        or :class:`StoreUnavailableError` while the ledger is unreachable and
        fail-closed.  With any other store this is exactly :meth:`reserve`.  ``checked``:
        the caller checked these amounts just now (they are checked again if midnight
        passed, once the new day's totals are loaded).
        """
        if not self._scopes.ready_today(task_id):  # midnight passed: read the new day's
            await self._scopes.ensure_today(task_id)
            checked = False
        reservation = self.reserve(task_id, model=model, tokens=tokens, cost_usd=cost_usd,
                                   checked=checked)
        if self._ledger is not None:
            await self._hold(self._ledger, reservation, {})
        return reservation

    async def hold_over(self, reservation: Reservation,
                        grace: Mapping[str, tuple[int, float]]) -> None:
        """Hold an overdraft's reservation (made past the limits, unchecked: the overdraft
        ledger checked the overshoot against the grace) across processes on a
        :class:`BudgetLedger`, like :meth:`reserve_shared` -- every other process then
        sees it -- with the limits of the scopes named in ``grace`` raised by their grace
        (tokens, dollars): all processes together never pass a limit by more than one
        grace.  Raises :class:`BudgetExceededError` (the reservation cancelled) when they
        would; does nothing on any other store."""
        if self._ledger is not None:
            await self._hold(self._ledger, reservation, grace)

    async def _hold(self, ledger: BudgetLedger, reservation: Reservation,
                    grace: Mapping[str, tuple[int, float]]) -> None:
        """Hold ``reservation`` in the scopes that span the store (its task's when shared,
        the session, the day) or cancel it and raise; ``grace``: extra room per scope."""
        task_id, model = reservation.task_id, reservation.model
        shared = self._shared(task_id)
        if not self._takes_hold(shared, model):
            return  # no limit to hold against (a grace only raises limits that exist)
        limits = tuple(_shared_limit(s, model, grace.get(s.name)) for s in shared)
        hold_id = self._hold_id(task_id)
        try:
            try:  # in line first: the usual answer without a frame more per waiting call
                hold = await ledger.try_reserve(hold_id, limits, model=model,
                                                tokens=reservation.tokens,
                                                cost_usd=reservation.cost_usd)
            except StoreUnavailableError as down:
                hold = await self._hold_shared(ledger, hold_id, limits, model,
                                               reservation.tokens, reservation.cost_usd, down)
        except BaseException:
            self.cancel(reservation)
            raise
        read = hold.totals or hold.fleet
        if read:  # every process's totals: the alerts' floor (R3.1), taken over if versioned
            versions = hold.versions
            for s in shared:
                got = read.get(s.name)
                if got is not None:
                    s.fleet = got
                    if versions:  # unless it would lose or double a charge of this process
                        s.adopt(got, versions.get(s.name, 0))
            hold = Hold(hold.hold_id, hold.scopes, hold.model, hold.tokens, hold.cost_usd,
                        _READ, _READ, hold.local)  # what settling needs (calls wait long)
        reservation.hold = hold

    @property
    def versioned(self) -> bool:
        """Whether the store versions its totals (see :data:`Recorded`): the scopes here
        then take over its snapshots of every process's totals."""
        return self._commit is not None

    async def refresh(self, scopes: Sequence[ScopeState]) -> None:
        """Take over the store's current, versioned totals of ``scopes``
        (``ScopeState.adopt``: a charge of this process they hold is not added again)."""
        read = getattr(self._store, "totals_with_version", None)
        if read is None:
            return
        for scope in scopes:
            try:
                totals, version = await read(scope.name)
            except StoreError:  # out of reach: the next hold refreshes them anyway
                continue
            scope.adopt(totals, version)

    def refreshed_scopes(self, event: UsageEvent) -> tuple[ScopeState, ...]:
        """The scopes of ``event`` whose totals the ledger's holds refresh from every
        process's (a ledger that versions its totals, Redis; none on SQLite)."""
        if not self.versioned or event.task_id not in self._scopes.tasks:
            return ()
        names = set(scopes_of(event))
        return tuple(s for s in self._shared(event.task_id) if s.name in names)

    def _shared(self, task_id: str) -> tuple[ScopeState, ...]:
        """The scopes a shared hold of ``task_id``'s call is placed in: its task scopes
        that span the store, the session and the day."""
        shared = tuple(s for s in self._scopes.of_task(task_id) if s.shared)
        return (*shared, self._scopes.session, self._scopes.day())

    def _takes_hold(self, scopes: tuple[ScopeState, ...], model: str) -> bool:
        """Whether :meth:`_hold` would place a hold for a call in ``scopes`` (the task's,
        :meth:`Scopes.of_task`, or those of :meth:`_shared`: the session and the day last):
        a limit to hold against in one it holds in, or a ledger that holds every call."""
        if self._hold_unlimited:
            return True
        session, day = scopes[-2], scopes[-1]
        for s in scopes:
            if s.shared or s is session or s is day:  # a limit a hold is checked against
                lim = s.limits
                if (lim.tokens is not None or lim.cost_usd is not None
                        or model in lim.tokens_by_model):
                    return True
        return False

    async def _hold_shared(
        self, ledger: BudgetLedger, hold_id: str, limits: tuple[ScopeLimit, ...], model: str,
        tokens: int, cost_usd: float, down: StoreUnavailableError,
    ) -> Hold:
        """Fail-closed, once the ledger did not answer (``down``): wait (backing off) up to
        ``distributed.unavailable_wait_s`` for it to come back, then raise."""
        deadline = self._clock() + self._unavailable_wait_s
        delay = 0.05
        while True:
            if self._clock() + delay > deadline:
                raise down
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
            try:
                return await ledger.try_reserve(
                    hold_id, limits, model=model, tokens=tokens, cost_usd=cost_usd
                )
            except StoreUnavailableError as exc:
                down = exc

    async def renew_hold(self, reservation: Reservation) -> bool:
        """Keep the reservation's shared hold alive while its call waits (``True`` without
        one); ``False`` when the hold already expired."""
        hold = reservation.hold
        renew = getattr(self._store, "renew", None)  # optional in the BudgetLedger protocol
        if hold is None or not reservation.active or renew is None:
            return True
        return bool(await renew(hold))

    def settle(self, event: UsageEvent, reservation: Reservation | None, *,
               close: tuple[str, str] | None = None) -> Awaitable[int | Recorded | Settled]:
        """Record ``event`` durably, ending ``reservation`` (its shared hold is released
        in the same atomic step); false (0) when the event was already recorded; on a
        store that versions its totals, the outcome with the versions of its scopes (see
        :data:`Recorded`); settling a shared hold, with every process's totals of its
        scopes too (:data:`Settled`, see :meth:`saw_fleet`).  The
        state record ``close`` (kind, key) is deleted after the event is recorded, in the
        same transaction when the store can (``REPLACED`` when that record was an open
        call charged at its estimate meanwhile, see ``store.record_and_delete_state``).
        The awaitable returned is the store's write itself (no coroutine more per charge).
        The reservation's amounts stay held here until the caller, having added the event
        to the scopes, cancels it (:meth:`cancel`): a check in between would count neither."""
        hold = None
        if reservation is not None:
            hold, reservation.hold = reservation.hold, None
        if self._commit is not None and (close is None or close[0] == OPEN_CALL):
            return self._commit(event, hold, close[1] if close else None)  # one script
        if hold is not None and self._ledger is not None:
            if close is not None and self._settle_and_delete is not None:
                return self._settle_and_delete(event, hold, *close)  # one write
            return self._settle_shared(event, hold, close)
        if close is not None:
            return record_and_delete_state(self._store, event, *close)
        return self._store.record(event)

    @staticmethod
    def settled(outcome: Recorded | Settled,
                reservation: Reservation | None) -> tuple[int, tuple[int, ...]]:
        """A store's answer to :meth:`settle` (a tuple) as :data:`Recorded`; the totals a
        :data:`Settled` brings (every process's, the event in them) become the floor of the
        alerts of ``reservation``'s shared scopes (``ScopeState.fleet``, R3.1): the holds of
        calls admitted together all read the totals from before any was charged, and the
        fleet's spend would otherwise reach no process before its next hold."""
        if len(outcome) == 2:
            return outcome
        fresh, versions, fleet = outcome
        if fresh and reservation is not None:
            for s in reservation.held:
                got = fleet.get(s.name)
                if got is not None:
                    s.fleet = got
        return fresh, versions

    async def _settle_shared(self, event: UsageEvent, hold: Hold,
                             close: tuple[str, str] | None) -> int:
        assert self._ledger is not None
        added = await self._ledger.settle(event, hold)
        if close is not None:
            await self._store.delete_state(*close)
        return added

    async def wait_for_holds(self, exc: BudgetExceededError) -> bool:
        """When this process's check refused a request (``exc``) only for what its calls
        (or operations) under way hold -- once charged at what they hold (they may use
        less), the request fits -- wait until held amounts go back here (at most
        :data:`SETTLE_POLL_S`) and answer True: the caller checks again.  Else False at
        once.  A refusal by a shared ledger (holds of other processes) says nothing
        held: this process is not told when those end."""
        if exc.shared or not (exc.held > 0 and exc.used - exc.held + exc.requested <= exc.limit):
            return False
        if self._settled is None:
            self._settled = anyio.Event()
        with anyio.move_on_after(SETTLE_POLL_S):
            await self._settled.wait()
        return True

    def _wake(self) -> None:
        settled, self._settled = self._settled, None
        if settled is not None:
            settled.set()

    async def release(self, reservation: Reservation) -> None:
        """:meth:`cancel`, also releasing the shared hold (a dropped hold expires anyway)."""
        self.cancel(reservation)
        hold, reservation.hold = reservation.hold, None
        if hold is not None and self._ledger is not None:
            await self._ledger.release(hold)

    def cancel(self, reservation: Reservation) -> None:
        """Return a reservation that will not be charged (call failed before usage)."""
        if not reservation.active:
            return
        reservation.active = False
        if self._settled is not None:  # a call waits for held amounts (seldom)
            self._wake()
        tokens, cost, model = reservation.tokens, reservation.cost_usd, reservation.model
        for s in reservation.held or [
                self._scopes.named(reservation.task_id, n) for n in reservation.scopes]:
            s.reserved_tokens -= tokens
            s.reserved_cost -= cost
            s.reserved_by_model[model] -= tokens


#: How long a request refused only for what calls under way here hold waits at most
#: before checking again (their charge or release wakes it at once).
SETTLE_POLL_S = 1.0

#: The (empty, never written) totals and amounts of a hold kept until its settle.
_READ: dict[str, Any] = {}


def _shared_limit(scope: ScopeState, model: str, grace: tuple[int, float] | None) -> ScopeLimit:
    lim = scope.limits
    tokens, model_tokens, cost = (lim.tokens, lim.tokens_by_model.get(model),  # type: ignore[call-overload]
                                  lim.cost_usd)
    if grace is not None:
        tokens = None if tokens is None else tokens + grace[0]
        model_tokens = None if model_tokens is None else model_tokens + grace[0]
        cost = None if cost is None else cost + grace[1]
    return ScopeLimit(scope.name, tokens, model_tokens, cost)
