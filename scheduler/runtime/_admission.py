"""Step 3 and 4 of the governed path: the lease, then admission against the budgets
(R1, R3, R5).

:class:`Admission` reserves a call's estimate in every budget scope of its task once the
call has its provider lease (a call queued for its turn holds no budget); at a
limit it pauses the task for a person's decision (R3.4) — after giving back the task's
leases through ``on_pause`` — and tries again when budget was added.  A pending pause
takes effect at these safe points, outside critical sections (R3.6); inside one, the
overdraft grace may cover the call (R3.5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio

from scheduler.allocator import Allocator, Lease
from scheduler.budget import Crossing, Reservation, Tracker
from scheduler.config import VibeConfig
from scheduler.control import Decision, PauseController
from scheduler.core import (
    AsyncHook,
    BudgetExceededError,
    FinishRequestedError,
    Hook,
    LeaseError,
    OverdraftDeniedError,
    get_logger,
)
from scheduler.tasks import TaskHandle

_log = get_logger("vibe_engine.gateway")

#: Step 7 (alerts) applied to time-based crossings before each reservation.
Signal = Callable[[TaskHandle, Sequence[Crossing]], Awaitable[None]]


class Admission:
    """Budget admission and leases of one run's model calls and operations."""

    def __init__(self, *, config: VibeConfig, tracker: Tracker, allocator: Allocator,
                 controller: PauseController, signal: Signal,
                 mirror: Callable[[TaskHandle], None],
                 flagged: Mapping[str, object] | None = None) -> None:
        self.config = config
        self.tracker = tracker
        self.allocator = allocator
        self.controller = controller
        self._signal = signal
        #: ``signal`` without crossings (sync: most calls cross no threshold) ...
        self._mirror = mirror
        #: ... needed while an alert flags a scope (``AlertRuntime.flagged``, never rebound)
        #: or the task's signals are not the defaults: mirroring would change nothing else.
        self._flagged: Mapping[str, object] = {"?": None} if flagged is None else flagged
        #: Awaited before a paused task waits for a decision: it gives back its leases (R3.4).
        self.on_pause: AsyncHook[[TaskHandle]] = AsyncHook()
        #: Called as a ``finish`` decision unwinds the task's agent (R3.4): the runtime
        #: gives an agent that goes on anyway a grace period, as after an abort.
        self.on_finish: Hook[[TaskHandle]] = Hook()
        #: Leases whose call is in flight, by id (renewed by :meth:`keep_leases`): the
        #: gateway's attempt adds and removes its lease here itself, so neither dict is
        #: ever rebound.
        self._in_call: dict[str, Lease] = {}
        #: Admitted reservations with a shared budget hold (Redis), until their call ends:
        #: :meth:`keep_holds` renews them while the call runs.
        self._holds: dict[int, Reservation] = {}

    async def admit(self, task: TaskHandle, model: str, tokens: int, cost: float, *,
                    prompt_tokens: int = 0, completion_tokens: int = 0,
                    lease: Lease | None = None) -> Reservation:
        """Reserve the estimate; at the limit pause for a decision (R3.4) and try again.

        The prompt estimate and ``max_tokens`` are checked against the prompt, completion
        and cache limits before the call, like the total and the cost (R1.1).  A task
        whose spec says ``on_limit = "reject"`` gets the ``BudgetExceededError`` instead.
        A refused call gives its provider ``lease`` back before it waits: a call waiting for
        held amounts to go back must not keep the turn of a call that holds them.
        """
        ctl, task_id = self.controller, task.id  # a property: read once
        reject = task.spec.on_limit == "reject"
        while True:
            crossings = self.tracker.time_crossings(task_id)
            signals = task.signals
            if crossings:
                await self._signal(task, crossings)
            elif (self._flagged or signals.alert_level != "ok" or signals.prefer_cheaper
                  or signals.aggressive):
                self._mirror(task)
            if ctl.is_paused(task_id):  # a safe point (:meth:`pause_point`); most calls
                if reject:                # find no pause pending: no coroutine to await
                    await ctl.discard(task_id)  # the alerts' 100 % pause: refused below
                await self.pause_point(task)
            raised = self.tracker.limits_raised
            try:
                now = _reserved(self.tracker, task_id, model, tokens, cost, prompt_tokens,
                                completion_tokens)
                if isinstance(now, Reservation):  # the usual case: held, nothing awaited
                    return now
                reservation = await ctl.reserve(task_id, model=model, tokens=tokens,
                                                cost_usd=cost, checked=now)
                if reservation.hold is not None and not reservation.hold.local:
                    self._holds[id(reservation)] = reservation  # until :meth:`ended`
                return reservation
            except BudgetExceededError as exc:
                if lease is not None and lease.active:
                    self.allocator.release(lease.id)
                if await self.tracker.wait_for_holds(exc):  # not the limit yet
                    continue
                if self.tracker.limits_raised != raised or await ctl.fleet.sync(task_id):
                    continue  # checked against limits from before budget was added (here,
                    # or by another process on the store)
                if reject:  # the caller answers it (serve keys)
                    raise
                await ctl.request_pause(task_id, error=exc)
            except OverdraftDeniedError as exc:
                if lease is not None and lease.active:
                    self.allocator.release(lease.id)
                cause = exc.__cause__
                error = cause if isinstance(cause, BudgetExceededError) else None
                if error is not None and await self.tracker.wait_for_holds(error):
                    continue
                await ctl.request_pause(task_id, exc.reason, error=error)
            await self.on_pause(task)
            self._decided(task, await ctl.wait_decision(task_id))

    def _decided(self, task: TaskHandle, decision: Decision | None) -> None:
        """Continue after ``add_budget``; unwind the agent after ``finish``."""
        if decision is not None and decision.action == "finish":
            self.on_finish(task)
            raise FinishRequestedError(task.id, decision.source)

    def fit(self, task: TaskHandle, model: str, cost: float, prompt: int, out: int) -> bool:
        """Whether a model call goes to wait for its provider lease before it is admitted
        (the usual case): True unless the task has a pause pending or the budgets refuse
        the call now for more than what calls under way hold -- :meth:`admit` first then:
        the task pauses at once (R3.4), giving back its leases, not once the call's turn
        came; a grace inside a critical section (R3.5) is granted once."""
        if self.controller.is_paused(task.id):
            return False
        try:
            self.tracker.check(task.id, model=model, tokens=prompt + out, cost_usd=cost,
                               prompt_tokens=prompt, completion_tokens=out)
        except BudgetExceededError as exc:  # fits once the calls under way are charged?
            return exc.held > 0 and exc.used - exc.held + exc.requested <= exc.limit
        return True

    async def leased(self, task: TaskHandle, lease: Lease | None, model: str, cost: float,
                     prompt: int, out: int) -> Reservation | None:
        """:meth:`admit` a model call whose provider ``lease`` was just granted: budget is
        held only by calls with their turn, never by calls queued for one -- a process with
        many queued calls would hold a shared budget away from the other processes while
        nothing is spent.  None, holding nothing, when a pause of the task gave the lease
        back meanwhile (it waits in the queue again); the lease is given back when
        admitting raises (a refusal, ``finish``, a cancellation).  Without a lease: a call
        that does not :meth:`fit` is admitted before it queues."""
        try:
            reservation = await self.admit(task, model, prompt + out, cost,
                                           prompt_tokens=prompt, completion_tokens=out,
                                           lease=lease)
        except BaseException:
            if lease is not None and lease.active:
                self.allocator.release(lease.id)
            raise
        if lease is None or lease.active:
            return reservation
        self._holds.pop(id(reservation), None)
        await self.tracker.release(reservation)
        return None

    async def admit_ops(
        self, task: TaskHandle, *, file_edits: int = 0, shell_commands: int = 0,
        dangerous_commands: int = 0,
    ) -> Callable[[], None]:
        """R3.4 for operation budgets: at a file-edit or shell-command limit the task pauses
        for a decision (add budget, finish, review) instead of failing, then checks again.
        The counts are held until the function returned is called (``Tracker.hold_ops``)."""
        ctl = self.controller
        while True:
            # against what the day spent, also when it began since the last check
            await self.tracker.load_today(task.id)
            # a pending token/cost pause waits for the next model call: the agent first
            # saves what the last (paid) call produced
            try:
                return self.tracker.hold_ops(task.id, file_edits=file_edits,
                                             shell_commands=shell_commands,
                                             dangerous_commands=dangerous_commands)
            except BudgetExceededError as exc:
                if await self.tracker.wait_for_holds(exc):  # under way still
                    continue
                if await ctl.fleet.sync(task.id):
                    continue  # another process's decision added to the budget
                await ctl.request_pause(task.id, error=exc)
            await self.on_pause(task)
            self._decided(task, await ctl.wait_decision(task.id))

    async def pause_point(self, task: TaskHandle) -> None:
        """A safe point: a pending pause takes effect here, after the task's leases are given
        back (no-op inside a critical section of the task, R3.6)."""
        if not self.controller.is_paused(task.id):
            return  # none pending (every call asks)

        async def release() -> None:
            await self.on_pause(task)

        self._decided(task, await self.controller.wait_if_paused(task.id, release=release))

    def lease(self, task: TaskHandle, tokens: int, model: str) -> Awaitable[Lease]:
        """The provider lease of a call to ``model``, before its budget is held
        (:meth:`admit_leased`): the allocator's wait itself, so a call waiting for its turn
        holds no frame of this step (thousands may wait)."""
        return self.allocator.acquire(task.id, tokens=tokens)

    async def lease_again(self, task: TaskHandle, tokens: int, model: str,
                          error: LeaseError) -> Lease:
        """The provider lease of a call whose wait :meth:`lease` ended in ``error``.

        A pause of the task (another of its calls at a limit) gives back its leases and
        withdraws its waits, this call's too: the call waits for the decision like the one
        that paused, then for its turn again (``finish`` raises) -- it does not fail
        (R3.4).  ``error`` is raised again when the task is not paused (a crash, a
        deadlock's victim).  Not in :meth:`lease`: a call waiting for its turn holds no
        frame of this step (thousands may wait)."""
        while self.controller.is_paused(task.id):
            await self.pause_point(task)
            try:
                return await self.lease(task, tokens, model)
            except LeaseError as again:
                error = again
        raise error

    async def keep_leases(self) -> None:
        """The service that renews every lease whose call is still running, every third of
        the TTL (R5.4 "unless renewed"): a call longer than ``allocator.lease_ttl_s``
        keeps its lease.  A lease that ended meanwhile (a pause gave it back) is skipped;
        settling still charges its call's usage."""
        every = self.config.allocator.lease_ttl_s / 3
        while True:
            await anyio.sleep(every)
            for lease in list(self._in_call.values()):
                if lease.active:
                    with contextlib.suppress(LeaseError):
                        self.allocator.renew(lease.id)

    async def keep_holds(self) -> None:
        """The service that renews, every third of ``distributed.hold_ttl_s``, the shared
        budget hold of every admitted call until it ends: a long streamed answer (or a
        long wait for a decision) must not let the hold lapse, or other replicas could
        spend what this call will be charged."""
        every = self.config.distributed.hold_ttl_s / 3
        while True:
            await anyio.sleep(every)
            for reservation in list(self._holds.values()):
                if not await self.tracker.renew_hold(reservation):
                    _log.warning("budget_hold_lapsed", task_id=reservation.task_id,
                                 tokens=reservation.tokens)


#: What a reservation holds: over one of these limits, the overdraft grace may still
#: cover the call inside a critical section (see ``PauseController.reserve``).
_RESERVED = frozenset({"tokens", "cost_usd"})


def _reserved(tracker: Tracker, task_id: str, model: str, tokens: int, cost: float,
              prompt_tokens: int, completion_tokens: int) -> Reservation | bool:
    """One pass over the budgets for a call: its reservation when this process alone
    decides (no shared ledger, today's totals loaded: nothing to await); else True when
    every limit takes it, and the pause controller reserves it.  A call over its prompt,
    completion or cache limits (or the time budget) raises; one over what a reservation
    holds answers False, and reserving raises or covers it (overdraft)."""
    try:
        now = tracker.reserve_now(task_id, model=model, tokens=tokens, cost_usd=cost,
                                  prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens)
        if now is not None:
            return now
        tracker.check(task_id, model=model, tokens=tokens, cost_usd=cost,
                      prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    except BudgetExceededError as exc:
        if exc.dimension in _RESERVED or exc.dimension.startswith("tokens:"):
            return False
        raise
    return True

