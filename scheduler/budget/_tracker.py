"""Charging usage to nested scopes and answering "how much is left" (R1.2, R1.5, R2.5, R2.6).

Every event is charged to its task, its session and its day; the tightest
scope decides whether a call may proceed.  :class:`Tracker` composes the parts:
the scopes and their totals (:mod:`._scopes`), the reservations calls in
flight hold (:mod:`._reservations`) and the per-task usage files
(:mod:`._usage_files`).  Totals are kept in memory for speed and written
through to the durable store; a new session on the same store starts from
what the day has already spent.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import anyio

from scheduler.budget._open_calls import OPEN, OpenCalls
from scheduler.budget._profile import TaskProfile
from scheduler.budget._reservations import Reservation, Reservations
from scheduler.budget._scope_state import Crossing, ScopeState, worst_fraction
from scheduler.budget._scopes import Scopes
from scheduler.budget._usage_files import UsageFiles
from scheduler.config import Limits, VibeConfig
from scheduler.core import (
    StoreUnavailableError,
    SystemWallClock,
    Usage,
    UsageEvent,
    WallClock,
    get_logger,
    loop_time,
)
from scheduler.core._usage import make_usage_event
from scheduler.store import Store
from scheduler.store._base import REPLACED

_log = get_logger("vibe_engine.budget")
#: A flush of the running tasks' files waits at least this many times as long as the
#: last one took: the files never take more than about 1/20 of the time.
FLUSH_SHARE = 20.0


@dataclass(frozen=True, slots=True)
class Remaining:
    """R2.5: what is left of a task's budget (``None`` = unlimited)."""

    tokens: int | None
    actions: int | None
    cost_usd: float | None
    time_s: float | None
    avg_tokens_per_action: float


@dataclass(frozen=True, slots=True)
class OpsHeld:
    """Counts :meth:`Tracker.hold_ops` holds: call it to let them go.  ``day`` (ISO date):
    the day whose budget admitted them, which their charge counts toward (R1.3)."""

    release: Callable[[], None]
    day: str

    def __call__(self) -> None:
        self.release()


class Tracker:
    """Charges usage to task ⊂ session ⊂ day and answers budget questions."""

    def __init__(
        self,
        store: Store,
        config: VibeConfig,
        *,
        session_id: str,
        wall: WallClock | None = None,
        clock: Callable[[], float] = loop_time,
        state_dir: Path | None = None,
        usage_json_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.config = config
        self.session_id = session_id
        self.wall = wall or SystemWallClock()
        self._clock = clock
        self._scopes = Scopes(store, config, session_id=session_id, wall=self.wall, clock=clock)
        self._reservations = Reservations(
            self._scopes, store, unavailable_wait_s=config.distributed.unavailable_wait_s,
            clock=clock, hold_id=lambda task_id: f"{self.next_event_id(task_id)}:hold",
        )
        #: Read today's totals before they are shown (:meth:`Scopes.ensure_shown`).
        self.load_shown_days = self._scopes.ensure_shown
        #: :meth:`today` once the latest day another process on the store began is read.
        self.catch_up_day = self._scopes.catch_up
        #: Wait for this process's holds when they alone refused a request (and say so).
        self.wait_for_holds = self._reservations.wait_for_holds
        # asked on every governed call: attributes, not methods that pass them through
        #: The task's scopes, innermost first (see :meth:`Scopes.of_task`).
        self.scopes = self._scopes.of_task
        #: The task's own scope (raises for a task not started).
        self.task_scope = self._scopes.task
        #: Threshold crossings of the task's wall-time budget, as of now.
        self.time_crossings = self._scopes.time_crossings
        #: A model call's :meth:`check` and :meth:`reserve` in one pass, when no wait is
        #: needed (see :meth:`Reservations.reserve_now`); None: use :meth:`reserve_shared`.
        self.reserve_now = self._reservations.reserve_now
        #: :meth:`reserve`, across processes too on a ``BudgetLedger`` (``Reservations``').
        self.reserve_shared = self._reservations.reserve_shared
        #: Hold an overdraft's reservation in the shared scopes of a ``BudgetLedger``
        #: within ``grace`` per scope (see :meth:`Reservations.hold_over`).
        self.hold_over = self._reservations.hold_over
        #: Keep a reservation's shared hold alive while its call waits (False: expired).
        self.renew_hold = self._reservations.renew_hold
        self._files = UsageFiles(state_dir, session_id=session_id, wall=self.wall, clock=clock,
                                 interval_s=usage_json_interval_s)
        # the wall clock's reading for an event: without the time-zone lookup when it can
        self._timestamp: Callable[[], float] = getattr(self.wall, "timestamp", None) or (
            lambda: self.wall.now().timestamp())
        self._seq = 0
        #: Times a person raised a limit (:meth:`raise_limits`): a check that failed while
        #: this moved may have read the limits from before.
        self.limits_raised = 0
        # a restarted orchestrator reusing a session id must not collide with the ids it
        # recorded before (they would be dropped as duplicates): ids carry a per-run nonce
        self._run = secrets.token_hex(4)
        self._open_calls = OpenCalls(store, run=self._run, wall=self.wall, clock=clock)
        #: Called with the event of each call this process settled in place of the
        #: estimate another process charged for it (see :meth:`_replaced_estimate`).
        self.on_estimate_replaced: Callable[[UsageEvent], None] | None = None

    # -- scopes --------------------------------------------------------------------

    @property
    def session(self) -> ScopeState:
        return self._scopes.session

    async def open(self) -> list[UsageEvent]:
        """Charge the calls a killed process left open at their estimate, then load the
        session's and today's totals from the store (R1.5); returns those charges.
        First this process's beat: the other processes on the store see it alive."""
        await self._open_calls.beat()
        charged = await self._open_calls.recover()
        await self._scopes.open()
        return [event for event, _ in charged]

    async def close(self) -> None:
        """The process is done with the store: its beat goes (see ``_open_calls``)."""
        await self._open_calls.end()

    async def recover_open_calls(self) -> list[UsageEvent]:
        """While running: charge at their estimate the calls that processes gone since
        left open (a replica killed mid-call on a shared store), as :meth:`open` does at
        start, and add them to this tracker's scopes that count every process's use.
        Idempotent across processes: each such call is charged once.  An estimate charged
        here whose call settled since (its process was only frozen: the settle replaced
        it in the store) is taken back from those scopes.  Each round bumps this
        process's beat, by which the others know it lives."""
        await self._open_calls.beat()
        # each added as soon as charged: on a store whose statements run on this thread
        # (SQLite) no read of the day is made in between, on Redis the versions tell
        charged = await self._open_calls.recover(self._scopes.add_recovered)
        replaced = await self._open_calls.replaced()  # their processes were only frozen
        if replaced:
            await self._take_back(replaced)
        return [event for event, _ in charged]

    def day_scope(self, day: date | None = None) -> ScopeState:
        return self._scopes.day(day)

    def today(self) -> date:
        """The wall clock's local date, never before a day already begun here or by
        another process on the store: the day a charge now counts toward."""
        return self._scopes.today()

    async def load_today(self, task_id: str) -> None:
        """Read today's totals (the day's, the task's per-day scope's) if not read yet:
        after midnight, before anything is checked against the new day (R1.5)."""
        if not self._scopes.ready_today(task_id):
            await self._scopes.ensure_today(task_id)

    async def start_task(self, task_id: str, profile: TaskProfile, *, agent: str = "",
                         span: str = "session", parent: str | None = None) -> None:
        """Register a task; a task this session ran before continues from its totals
        (``span="store"``: from every session's, see :meth:`Scopes.start_task`); a
        ``parent`` task's scope encloses it."""
        await self._scopes.start_task(task_id, profile, agent, span, parent)

    def finish_task(self, task_id: str, status: str = "completed") -> None:
        """Record how the task ended and write its ``usage.json`` (raises LocalFileError)."""
        entry = self._scopes.tasks.get(task_id)
        if entry is not None:
            entry.status = status
            self._files.write(task_id, entry)

    async def end_task(self, task_id: str, status: str = "completed", *,
                       beside: Mapping[str, Any] | None = None) -> bool:
        """:meth:`finish_task` with the file written off the event loop (on asyncio);
        ``usage.json`` is current when this returns (raises LocalFileError).  ``beside``:
        other documents of the task's folder by file name, written in the same hop (see
        :meth:`UsageFiles.write_off_loop`).  False when no file was written (no state
        directory, or a task this tracker does not know)."""
        entry = self._scopes.tasks.get(task_id)
        if entry is None:
            return False
        entry.status = status
        return await self._files.write_off_loop(task_id, entry, beside) is not None

    def forget_task(self, task_id: str) -> None:
        """Drop an ended task's scopes from memory (its ``usage.json`` was written at its
        end; its totals stay in the store)."""
        self._scopes.forget(task_id)

    def write_usage(self, task_id: str | None = None) -> None:
        """Bring ``usage.json`` up to date now, for one task (it pauses) or every task
        whose file is older than its last charge (the run ends); a file that cannot be
        written is logged and retried later."""
        ids = list(self._scopes.tasks) if task_id is None else [task_id]
        for tid in ids:
            entry = self._scopes.tasks.get(tid)
            if entry is not None and (task_id is not None or entry.usage_dirty):
                self._files.try_write(tid, entry)

    def tasks(self) -> list[str]:
        return list(self._scopes.tasks)

    def own_day_scope(self, task_id: str) -> ScopeState | None:
        """Today's per-day scope of a task with a ``day_budget`` (not of a task whose use
        only counts toward its parent's day), else None."""
        entry = self._scopes.tasks.get(task_id)
        if entry is None or entry.day_root != task_id:
            return None
        return self._scopes.task_day(task_id)

    def has_task(self, task_id: str) -> bool:
        return task_id in self._scopes.tasks

    def scope_named(self, task_id: str, name: str) -> ScopeState | None:
        """The scope ``name`` if it is one of ``task_id``'s (its own, its parent's, its
        per-day one, the session, a day), else None (e.g. a task not started)."""
        if name.startswith("day:"):
            return self._scopes.day(date.fromisoformat(name[4:]))
        if name.startswith("session:"):
            return self._scopes.session
        entry = self._scopes.tasks.get(task_id)
        if entry is None:
            return None
        if name.startswith("task:"):
            owner = name[5:]
            return self._scopes.task(owner) if owner in (task_id, entry.parent) else None
        return self._scopes.task_days.get(name)

    def raise_limits(self, scope: ScopeState, extra: Limits) -> None:
        """Add to a scope's limits (a person added budget) and re-arm passed thresholds."""
        self._scopes.raise_limits(scope, extra)
        self.limits_raised += 1

    # -- admission -----------------------------------------------------------------

    def check(
        self, task_id: str, *, model: str = "", tokens: int = 0, cost_usd: float = 0.0,
        file_edits: int = 0, shell_commands: int = 0, dangerous_commands: int = 0,
        prompt_tokens: int = 0, completion_tokens: int = 0,
    ) -> None:
        """Raise :class:`BudgetExceededError` if the request would cross any limit
        (see :meth:`Reservations.check`)."""
        self._reservations.check(
            task_id, model=model, tokens=tokens, cost_usd=cost_usd, file_edits=file_edits,
            shell_commands=shell_commands, dangerous_commands=dangerous_commands,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        )

    def hold_ops(self, task_id: str, *, file_edits: int = 0, shell_commands: int = 0,
                 dangerous_commands: int = 0) -> OpsHeld:
        """Check and hold an operation's counts; call the result to let them go (see
        :meth:`Reservations.hold_ops`; :meth:`charge` does when given it)."""
        release = self._reservations.hold_ops(task_id, file_edits=file_edits,
                                              shell_commands=shell_commands,
                                              dangerous_commands=dangerous_commands)
        return OpsHeld(release, self._scopes.checked_day())

    def reserve(self, task_id: str, *, model: str, tokens: int, cost_usd: float) -> Reservation:
        """Check, then hold ``tokens``/``cost_usd`` against every scope until charged."""
        return self._reservations.reserve(task_id, model=model, tokens=tokens, cost_usd=cost_usd)

    def reserve_over(self, task_id: str, *, model: str, tokens: int,
                     cost_usd: float) -> Reservation:
        """Hold ``tokens``/``cost_usd`` against every scope without checking the limits:
        an overdraft's reservation (R3.5), made in this process; :meth:`hold_over` holds
        it across processes."""
        return self._reservations.reserve(task_id, model=model, tokens=tokens,
                                          cost_usd=cost_usd, checked=True)

    async def release(self, reservation: Reservation) -> None:
        """:meth:`cancel`, also releasing the shared hold (a dropped hold expires anyway)
        and closing the call's ``open_call`` record."""
        await self._reservations.release(reservation)
        await self._close(reservation)

    def open_call(
        self, reservation: Reservation, *, prompt_tokens: int, output_tokens: int
    ) -> Awaitable[None]:
        """Record ``reservation`` durably before its call goes out: a crash then leaves a
        record that the next start charges at this estimate (see ``_open_calls``).

        Returns the store's write itself (no coroutine of this method per call).  The
        reservation counts as recorded from now on: a caller cancelled while its batch
        commits has its record written all the same (a commit is never cancelled
        half-way), so releasing the reservation must delete it."""
        task_id = reservation.task_id
        event_id = reservation.event_id
        if not event_id:  # one format of event ids: its open-call key and event agree
            event_id = reservation.event_id = self.next_event_id(task_id)
        # what its records name besides its id: agent, task type, the task whose per-day
        # budget its use counts toward (empty for a task not started here), and the day
        # that admitted it, not today: midnight may have passed while it waited for a lease
        entry = self._scopes.tasks.get(task_id)
        reservation.durable = True
        return self._open_calls.open(
            event_id, task_id, self.session_id, reservation.scopes[-1][4:],  # ``.day``
            "" if entry is None else entry.agent,
            "" if entry is None else entry.profile.task_type, reservation.model,
            prompt_tokens, output_tokens, reservation.cost_usd,
            "" if entry is None else entry.day_root or "")

    async def _close(self, reservation: Reservation | None) -> None:
        if reservation is not None and reservation.durable:
            reservation.durable = False
            await self._open_calls.close(reservation.event_id)

    def cancel(self, reservation: Reservation) -> None:
        """Return a reservation that will not be charged (call failed before usage)."""
        self._reservations.cancel(reservation)

    # -- charging ------------------------------------------------------------------

    def next_event_id(self, task_id: str) -> str:
        self._seq += 1
        return f"{self.session_id}:{self._run}:{task_id}:{self._seq}"

    def make_event(
        self, task_id: str, *, model: str = "", usage: Any = None, cost_usd: float = 0.0,
        file_edits: int = 0, shell_commands: int = 0, dangerous_commands: int = 0,
        event_id: str | None = None, day: str | None = None,
    ) -> UsageEvent:
        """The usage event of ``task_id``, counted toward ``day`` (ISO date; default today:
        a call's is the day its reservation was checked against, ``Reservation.day``)."""
        entry = self._scopes.tasks.get(task_id)  # named as in :meth:`open_call`
        agent, task_type, day_scope = ("", "", "") if entry is None else (
            entry.agent, entry.profile.task_type, entry.day_root or "")
        # every field in ``UsageEvent``'s order (the ledger's record: a test sets each to
        # a value of its own, so a shifted position fails it)
        return make_usage_event(
            event_id or self.next_event_id(task_id), task_id, self.session_id,
            day or self._scopes.today_key(), self._timestamp(), agent, model,
            Usage() if usage is None else usage, cost_usd, file_edits, shell_commands,
            dangerous_commands, task_type, day_scope)

    async def charge(
        self, event: UsageEvent, reservation: Reservation | None = None, *,
        ops_held: OpsHeld | Callable[[], None] | None = None,
    ) -> list[Crossing]:
        """Record ``event`` durably, add it to every scope, return new threshold crossings.
        ``ops_held`` (from :meth:`hold_ops`) is let go as the counts are added, and the
        event counts toward the day that admitted them (an operation may end after it)."""
        if ops_held is not None and isinstance(ops_held, OpsHeld) and ops_held.day != event.day:
            event = replace(event, day=ops_held.day)
        # the call's open_call record goes with its event, in one transaction where the
        # store can (else after it: a crash between keeps the call charged)
        close = None
        if reservation is not None and reservation.durable:
            close = (OPEN, reservation.event_id)  # ``OpenCalls.key``, without its frame
        scopes = self._scopes
        if not scopes.ready(event):  # the day's first charge here: read its totals first
            # unreachable store: recorded all the same (spooled); ``add`` reads them after
            with contextlib.suppress(StoreUnavailableError):
                await scopes.load_for(event)
        try:  # held until added (a check in between would count neither), then let go
            outcome = await self._reservations.settle(event, reservation, close=close)
            if reservation is not None and close is not None:
                reservation.durable = False
            fresh, versions = (self._reservations.settled(outcome, reservation)
                               if isinstance(outcome, tuple) else (outcome, ()))
            if not fresh:
                return []
            if fresh == REPLACED:
                await self._replaced_estimate(event)
            crossings = scopes.add_loaded(event, versions=versions)  # no wait but on a
            if crossings is None:                                     # day's first charge
                crossings = await scopes.add(event, versions)
        finally:
            if reservation is not None:
                self._reservations.cancel(reservation)
            if ops_held is not None:
                ops_held()
        entry = scopes.tasks.get(event.task_id)
        if entry is None:
            return crossings
        if entry.usage_charged and not crossings:  # ``after_charge``'s usual case, inline
            entry.usage_dirty = True
        elif self._files.after_charge(event.task_id, entry, crossed=bool(crossings)):
            # a threshold crossed: the file says so at once (else the next flush writes it)
            await self._files.try_write_off_loop(event.task_id, entry)
        return crossings

    async def _replaced_estimate(self, event: UsageEvent) -> None:
        """``event`` settled a call that another process, taking this one for dead (it was
        frozen past ``BEAT_STALE_S``), had charged at its estimate: the store now counts
        the call once, by ``event``.  Scopes here that take over the store's snapshots
        (a store that versions its totals) may hold that estimate: they take over the
        totals as they are now, which hold ``event`` (its charge then adds nothing)."""
        _log.warning("open_call_estimate_replaced", task_id=event.task_id,
                     event_id=event.event_id, tokens=event.usage.total_tokens)
        if self.on_estimate_replaced is not None:
            self.on_estimate_replaced(event)
        await self._reservations.refresh(self._reservations.refreshed_scopes(event))

    async def _take_back(self, replaced: list[UsageEvent]) -> None:
        """Estimates this tracker charged and added that a woken process's settle replaced
        since: taken back from the scopes here that count them -- on a store that versions
        its totals by taking over the totals as they are now (the estimate's removal and
        the call's usage both in them), else by removing each estimate."""
        if not self._reservations.versioned:
            for event in replaced:
                self._scopes.take_back_recovered(event)
            return
        await self._reservations.refresh(tuple({id(s): s for e in replaced
                                   for s in self._scopes.counting(e)}.values()))

    async def flush_usage(self) -> None:
        """The service that keeps running tasks' ``usage.json`` at most one interval
        behind their charges: every ``usage_json_interval_s``, the dirty files in one
        worker-thread hop (see ``_usage_files``) -- or, after a flush that took longer than
        a twentieth of that, twenty times as long as it took (with thousands of tasks or a
        slow disk, files take at most about 5 % of the time).  Runs until cancelled."""
        wait = self._files.interval_s
        while True:
            await anyio.sleep(wait)
            start = self._clock()
            await self.flush_dirty_usage()
            wait = max(self._files.interval_s, FLUSH_SHARE * (self._clock() - start))

    async def flush_dirty_usage(self) -> int:
        """Rewrite now every running task's ``usage.json`` older than its last charge;
        returns how many were written."""
        return await self._files.flush_dirty(self._scopes.tasks)

    # -- questions -----------------------------------------------------------------

    def fraction_used(self, task_id: str,
                      scopes: tuple[ScopeState, ...] | None = None) -> float:
        """The largest used/limit ratio over every dimension of the task's scopes
        (``scopes``: ``scopes(task_id)``, when the caller read them already)."""
        return worst_fraction(self.scopes(task_id) if scopes is None else scopes)

    def token_fraction(self, task_id: str) -> float:
        """Task tokens used ÷ task token limit (0 when unlimited); R5.2 demotion input."""
        entry = self._scopes.tasks.get(task_id)  # asked after every charge
        scope = entry.scope if entry is not None else self._scopes.task(task_id)
        lim = scope.limits.tokens
        if not lim:
            return 0.0
        t = scope.totals  # ``Totals.tokens``, without its frame
        return (t.prompt_tokens + t.completion_tokens + t.cache_read_tokens
                + t.cache_write_tokens) / lim

    def remaining(self, task_id: str) -> Remaining:
        """R2.5: tokens, further actions, cost and time left for a task."""
        entry = self._scopes.tasks[task_id]
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
        return Remaining(tokens_left, actions_left, cost_left, self.time_left(task_id), avg)

    def time_left(self, task_id: str) -> float | None:
        """Seconds left of the task's wall-time budget (``None`` = unlimited): what
        :meth:`remaining` says of time, without its tokens, cost and actions."""
        scope = self._scopes.tasks[task_id].scope
        limit = scope.limits.time_s
        if limit is None:
            return None
        return max(limit - (self._clock() - scope.started_at), 0.0)
