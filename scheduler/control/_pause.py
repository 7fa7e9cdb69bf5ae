"""Pause and decide, and critical-operation protection (R3.4–R3.6).

A task whose budget is exceeded is *paused*: the gateway releases its leases,
its checkpoint stays in the store, and it waits in :meth:`PauseController.wait_decision`
until a person decides: ``add_budget`` (to the exceeded scope, through
:meth:`Tracker.raise_limits`; outstanding overdraft is repaid first) and continue,
``finish`` (save progress and finish) or ``review`` (a summary; it stays paused).

A pause at a per-day budget lifts itself once that day is over (``_new_day``).

Pending pauses and decisions are state records (kinds ``pause`` and
``decision``, keyed ``<session>/<task>``), so they survive an orchestrator
restart and are picked up when the session is resumed -- never by a later
session that reuses the task id -- and a decision written to the store by
another process is picked up by polling.  Budget a person added is kept as kind
``budget`` (and for every process, ``_fleet``) and re-applied by :meth:`restore_task`.

Critical sections (``open_critical(task_id, "git_commit")``) defer a pause until
they complete, and a call made inside one may use the overdraft grace instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import anyio

from scheduler.budget import Reservation, Tracker
from scheduler.config import Limits
from scheduler.control._decision import (
    Decision,
    DecisionAction,
    added_up,
    already_decided,
    checked,
    from_store,
    limits_added,
    not_paused,
)
from scheduler.control._fleet import FleetBudget, counts_every_process
from scheduler.control._new_day import CHECK_S, day_over, scope_day
from scheduler.control._overdraft import OverdraftLedger
from scheduler.control._pause_state import PauseStatistics as PauseStatistics
from scheduler.control._pause_state import TaskControl
from scheduler.control._stored import review_summary
from scheduler.core import BudgetExceededError, EventBus, StoreUnavailableError, get_logger
from scheduler.store import Store, task_key, task_of_key

_log = get_logger("vibe_engine.pause")

#: Critical sections the current context is inside: (task_id, name, serial of the pause
#: already pending when the section was opened, or 0).
_inside: ContextVar[tuple[tuple[str, str, int], ...]] = ContextVar("vibe_critical", default=())


@dataclass(slots=True)
class PauseInfo:
    """A pending pause: why, and whether it has taken effect (``state``)."""

    task_id: str
    reason: str
    scope: str = ""
    dimension: str = ""
    used: float = 0.0
    limit: float = 0.0
    state: Literal["requested", "paused"] = "requested"
    at: float = 0.0
    serial: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PauseController:
    """Pauses tasks, collects decisions, guards critical sections (module docstring)."""

    def __init__(
        self, store: Store, tracker: Tracker, events: EventBus, *,
        overdraft: OverdraftLedger | None = None, poll_s: float | None = 1.0,
        decision_timeout_s: float | None = None,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.events = events
        self.overdraft = overdraft
        self.poll_s = poll_s
        self._pauses: dict[str, PauseInfo] = {}
        self._decisions: dict[str, Decision] = {}
        #: decisions being stored: taken, not yet visible to waiters (first one wins).
        self._claims: dict[str, Decision] = {}
        self._tasks: dict[str, TaskControl] = {}
        self._applied = 0
        self._last: dict[str, Decision] = {}
        self._announced: set[str] = set()
        #: Tasks that may have pause or decision records in the store: paused by this
        #: controller or loaded at open (a decision is stored only for a paused task).
        self._recorded: set[str] = set()
        self._serial = 0
        self.decision_timeout_s = decision_timeout_s
        #: Called with each applied decision (the alert runtime clears its flags).
        self.on_decision: list[Callable[[Decision], None]] = []
        #: Budget added to scopes every process on the store counts (``_fleet``).
        self.fleet = FleetBudget(store, tracker)

    async def open(self) -> None:
        """Load this session's pending pauses and decisions (R3.4: they survive a restart)."""
        for key, value in (await self.store.list_state("pause")).items():
            session, task_id = task_of_key(key)
            if session == self.tracker.session_id:
                self._serial += 1
                self._pauses[task_id] = PauseInfo(**{**value, "serial": self._serial})
                self._recorded.add(task_id)
        for key, value in (await self.store.list_state("decision")).items():
            session, task_id = task_of_key(key)
            if session == self.tracker.session_id:
                self._recorded.add(task_id)
                decision = await self._stored(task_id, value)
                if decision is not None:
                    self._decisions[task_id] = decision
        if self.overdraft is not None:
            await self.overdraft.open()
        await self.fleet.open()

    async def restore_task(self, task_id: str) -> None:
        """Re-apply budget people added before a restart (call after ``start_task``): to
        scopes every process counts, what any process's decisions added (``_fleet``)."""
        await self.fleet.sync(task_id)
        added = await self.store.get_state("budget", self._key(task_id))
        for scope_name, extra in (added or {}).get("scopes", {}).items():
            scope = self.tracker.scope_named(task_id, scope_name)
            if scope is not None and not counts_every_process(scope):
                self.tracker.raise_limits(scope, Limits.model_validate(extra))

    def forget(self, task_id: str) -> None:
        """Drop what is held of an ended task the run forgets (its records went at its end)."""
        for held in (self._tasks, self._last, self._claims):
            held.pop(task_id, None)

    def _ctl(self, task_id: str) -> TaskControl:
        ctl = self._tasks.get(task_id)
        if ctl is None:
            ctl = self._tasks[task_id] = TaskControl()
        return ctl

    def _key(self, task_id: str) -> str:
        return task_key(self.tracker.session_id, task_id)

    def _now(self) -> float:
        return self.tracker.wall.now().timestamp()

    # -- questions -----------------------------------------------------------------

    def is_paused(self, task_id: str) -> bool:
        """A pause is pending (requested or in effect) for ``task_id``."""
        return task_id in self._pauses

    def pause_info(self, task_id: str) -> PauseInfo | None:
        return self._pauses.get(task_id)

    def paused_tasks(self) -> list[PauseInfo]:
        return list(self._pauses.values())

    def current_critical(self, task_id: str) -> str | None:
        """The innermost critical section of ``task_id`` the *calling* context is inside."""
        names = [n for t, n, _ in _inside.get() if t == task_id]
        return names[-1] if names else None

    def in_progress_operation(self, task_id: str) -> str | None:
        """The operation (outermost critical section of the calling context) that was
        already in progress when the task's pending pause was requested; None if the
        context is in no critical section or opened it while the pause was pending."""
        mine = [(n, serial) for t, n, serial in _inside.get() if t == task_id]
        if not mine:
            return None
        name, serial = mine[0]
        pending = self._pauses.get(task_id)
        if serial and pending is not None and pending.serial == serial:
            return None
        return name

    def statistics(self) -> PauseStatistics:
        return PauseStatistics(
            tuple(t for t, p in self._pauses.items() if p.state == "paused"),
            tuple(t for t, p in self._pauses.items() if p.state == "requested"),
            {t: c.critical for t, c in self._tasks.items() if c.critical},
            self._applied,
        )

    # -- critical sections -----------------------------------------------------------

    @asynccontextmanager
    async def open_critical(self, task_id: str, name: str) -> AsyncIterator[None]:
        """Run a file write / git commit / external call to completion before any pause."""
        ctl = self._ctl(task_id)
        ctl.critical += 1
        pending = self._pauses.get(task_id)
        token = _inside.set((*_inside.get(), (task_id, name, pending.serial if pending else 0)))
        _log.debug("critical_section_entered", task_id=task_id, name=name)
        try:
            yield
        finally:
            _inside.reset(token)
            ctl.critical -= 1
            ctl.notify()
            _log.debug("critical_section_left", task_id=task_id, name=name)

    async def reserve(
        self, task_id: str, *, model: str, tokens: int, cost_usd: float, checked: bool = False,
    ) -> Reservation:
        """:meth:`Tracker.reserve`, using the overdraft grace inside a critical section.

        Outside a critical section (or without an overdraft ledger) a request
        over the limit raises :class:`BudgetExceededError` (the caller pauses);
        inside one it is granted within the grace or raises
        :class:`OverdraftDeniedError`.  ``checked``: the caller found the amounts
        within every limit just now.
        """
        try:
            return await self.tracker.reserve_shared(
                task_id, model=model, tokens=tokens, cost_usd=cost_usd, checked=checked)
        except BudgetExceededError as exc:
            operation = self.in_progress_operation(task_id)
            if operation is None or self.overdraft is None:
                raise
            return await self.overdraft.reserve(
                task_id, model=model, tokens=tokens, cost_usd=cost_usd,
                operation=operation, error=exc,
            )

    # -- pausing -------------------------------------------------------------------

    async def request_pause(
        self, task_id: str, reason: str = "", *, error: BudgetExceededError | None = None,
    ) -> PauseInfo:
        """Ask ``task_id`` to pause; it takes effect outside critical sections."""
        info = self._pauses.get(task_id)
        if info is not None:
            return info
        self._serial += 1
        info = PauseInfo(task_id, reason or (str(error) if error else "paused"), at=self._now(),
                         serial=self._serial)
        if error is not None:
            info.scope, info.dimension = error.scope, error.dimension
            info.used, info.limit = float(error.used), float(error.limit)
        self._pauses[task_id] = info
        self._recorded.add(task_id)
        await self.store.put_state("pause", self._key(task_id), info.to_dict())
        self.events.emit("pause_requested", info.reason, task_id=task_id, level="warning",
                         scope=info.scope, dimension=info.dimension)
        return info

    async def discard(self, task_id: str) -> None:
        """Forget a pause that never took effect because the task ended (completed)."""
        self._pauses.pop(task_id, None)
        self._decisions.pop(task_id, None)
        self._announced.discard(task_id)
        if task_id in self._recorded:  # most tasks never paused: no store round trips
            self._recorded.discard(task_id)
            await self.store.delete_state("pause", self._key(task_id))
            await self.store.delete_state("decision", self._key(task_id))
        ctl = self._tasks.get(task_id)  # not created for a task that never paused
        if ctl is not None:
            ctl.notify()

    async def wait_if_paused(
        self, task_id: str, *, release: Callable[[], Awaitable[None]] | None = None,
    ) -> Decision | None:
        """At a safe point: if a pause is pending, release leases and wait for a decision.

        Returns ``None`` when no pause is pending, or when the caller is itself
        inside a critical section of the task (the pause waits for it to end).
        """
        if not self.is_paused(task_id) or self.current_critical(task_id) is not None:
            return None
        if release is not None:
            await release()
        return await self.wait_decision(task_id)

    async def wait_decision(self, task_id: str) -> Decision:
        """Block until a person decides ``add_budget`` or ``finish`` (review keeps waiting).

        Several coroutines of one task may wait on the same pause: the first
        applies the decision, the others return it too.  With
        ``decision_timeout_s`` set, no decision in time means ``finish``.
        """
        info = self._pauses.get(task_id)
        if info is None:
            info = await self.request_pause(task_id, "paused")
        if not await self._wait_critical_done(task_id, info):
            return self._last[task_id]
        await self._mark_paused(info)
        with anyio.move_on_after(
            self.decision_timeout_s if self.decision_timeout_s is not None else float("inf")
        ):
            return await self._wait_for_decision(task_id, info)
        if self._pauses.get(task_id) is not info:
            return self._last[task_id]
        timeout = Decision(task_id, "finish", source="timeout", at=self._now())
        await self._apply(timeout)
        return timeout

    async def _wait_for_decision(self, task_id: str, info: PauseInfo) -> Decision:
        ctl = self._ctl(task_id)
        wait = self.poll_s if self.poll_s is not None else float("inf")
        if scope_day(info.scope) is not None:
            wait = min(wait, CHECK_S)
        while True:
            if self._pauses.get(task_id) is not info:
                return self._last[task_id]  # another waiter applied it
            try:
                if await day_over(info.scope, self.tracker):
                    return await self._lift(info)
                decision = await self._next_decision(task_id, info)
            except StoreUnavailableError as exc:  # the store is away: still paused, asked again
                _log.warning("pause_decision_unreadable", task_id=task_id, error=str(exc))
                decision = None
            if decision is not None:
                await self._apply(decision)
                return decision
            if self._pauses.get(task_id) is info:
                with anyio.move_on_after(wait):
                    await ctl.changed().wait()

    async def _next_decision(self, task_id: str, info: PauseInfo) -> Decision | None:
        """The decision made for this pause since the last look, if any."""
        decision = self._decisions.pop(task_id, None)
        if decision is None and self.poll_s is not None:
            stored = await self.store.get_state("decision", self._key(task_id))
            if self._pauses.get(task_id) is not info:
                return None
            decision = await self._stored(task_id, stored)
            if decision is not None and decision == self._last.get(task_id):
                decision = None  # applied to the last pause; its record is being deleted
        if decision is None and self._fleet_wide(task_id, info) and await self.fleet.sync(
                task_id):  # another process's decision added to this budget: try again
            decision = Decision(task_id, "resume", source="fleet", at=self._now())
        return decision

    async def _lift(self, info: PauseInfo) -> Decision:
        """End a pause whose day budget started over (module docstring)."""
        self.events.emit("pause_lifted", f"task {info.task_id} resumes: {info.scope} is over "
                         "and the new day's budget applies", task_id=info.task_id,
                         scope=info.scope, dimension=info.dimension)
        decision = Decision(info.task_id, "resume", source="new_day", at=self._now())
        await self._apply(decision)
        return decision

    async def _mark_paused(self, info: PauseInfo) -> None:
        """Persist that the pause is in effect and tell people (again after a restart)."""
        task_id = info.task_id
        if task_id in self._announced:
            return
        self._announced.add(task_id)
        if info.state != "paused":
            info.state = "paused"
            await self.store.put_state("pause", self._key(task_id), info.to_dict())
        usage = (self.tracker.task_scope(task_id).totals.to_dict()
                 if task_id in self.tracker.tasks() else {})
        # told elsewhere (or before): still an event here, for status and metrics
        told = not self._fleet_wide(task_id, info) or await self.fleet.first_to_tell_pause(
            task_id, info.scope, info.dimension, info.limit)
        self.events.emit(
            "task_paused", f"task {task_id} paused: {info.reason}", task_id=task_id,
            level="warning" if told else "info", usage=usage, told=told,
            choices=["add_budget", "finish", "review"],
            dimension=info.dimension, used=info.used, limit=info.limit,
        )

    async def _wait_critical_done(self, task_id: str, info: PauseInfo) -> bool:
        """Wait for other coroutines' critical sections; False if the pause was resolved."""
        ctl = self._ctl(task_id)
        own = sum(1 for t, _, _ in _inside.get() if t == task_id)
        while ctl.critical > own:
            if self._pauses.get(task_id) is not info:
                return False
            await ctl.changed().wait()
        return self._pauses.get(task_id) is info

    # -- deciding ------------------------------------------------------------------

    async def decide(
        self, task_id: str, action: str, *, tokens: int | None = None,
        cost_usd: float | None = None, time_s: float | None = None,
        file_edits: int | None = None, shell_commands: int | None = None,
        source: str = "python",
    ) -> dict[str, Any]:
        """Record a person's decision for a paused task; ``review`` returns a summary."""
        decision = checked(Decision(task_id, cast(DecisionAction, action), tokens, cost_usd,
                                    time_s, file_edits, shell_commands, source, self._now()))
        pause = self._pauses.get(task_id)
        if pause is None and await self.store.get_state("pause", self._key(task_id)) is None:
            last = self._last.get(task_id)
            if last is not None and decision.action != "review":
                raise already_decided(task_id, last, applied=True)
            raise not_paused(task_id, self.tracker.has_task(task_id), "this run has")
        if decision.action == "review":
            summary = await review_summary(self.store, task_id, self.tracker.session_id)
            self.events.emit("task_review", f"review of paused task {task_id}",
                             task_id=task_id, source=source)
            return {"accepted": True, "action": "review", "summary": summary}
        await self._claim(decision, pause)
        self.events.emit("decision_received", f"{action} for {task_id} from {source}",
                         task_id=task_id, action=action, source=source, amounts=decision.amounts())
        self._ctl(task_id).notify()
        return {"accepted": True, "action": decision.action}

    async def _stored(self, task_id: str, value: dict[str, Any] | None) -> Decision | None:
        """The valid decision stored for ``task_id``; an invalid one is deleted and told."""
        decision = from_store(value)
        if value and decision is None:
            await self.store.delete_state("decision", self._key(task_id))
            self.events.emit("decision_discarded", f"stored decision for {task_id} is invalid",
                             task_id=task_id, level="warning", stored=value)
        return decision

    async def _claim(self, decision: Decision, pause: PauseInfo | None) -> None:
        """Take ``decision`` as the one for this pause, or raise: the first decision wins.

        The claim is made before any await, so of two requests served at once only the
        first is taken; a decision already in the store (written by a ``decide`` that found
        no orchestrator) counts as first too.  Waiters see it once it is stored."""
        task_id = decision.task_id
        first = self._decisions.get(task_id) or self._claims.get(task_id)
        if first is not None:
            raise already_decided(task_id, first, applied=False)
        self._claims[task_id] = decision
        try:
            stored = await self._stored(
                task_id, await self.store.get_state("decision", self._key(task_id)))
            if stored is not None:
                raise already_decided(task_id, stored, applied=False)
            await self.store.put_state("decision", self._key(task_id), decision.to_dict())
        finally:
            del self._claims[task_id]
        if pause is not None and self._pauses.get(task_id) is not pause:
            if self._last.get(task_id) == decision:
                return  # a waiter's store poll read this decision and applied it
            # the pause ended while the decision was stored (the decision timeout)
            await self.store.delete_state("decision", self._key(task_id))
            raise already_decided(task_id, self._last[task_id], applied=True)
        self._decisions[task_id] = decision

    async def _apply(self, decision: Decision) -> None:
        task_id = decision.task_id
        info = self._pauses.pop(task_id, None)
        self._decisions.pop(task_id, None)  # also queued when a store poll read it first
        self._announced.discard(task_id)
        self._last[task_id] = decision
        if decision.action == "add_budget":
            await self._add_budget(decision, info)
        elif decision.action == "finish" and self._fleet_wide(task_id) and (
                not decision.source.startswith("fleet")):  # once, by the process it reached
            await self.fleet.pass_on(task_id, {**decision.to_dict(),
                                               "source": f"fleet ({decision.source})"})
        await self.store.delete_state("decision", self._key(task_id))
        await self.store.delete_state("pause", self._key(task_id))
        self._applied += 1
        self.events.emit("decision_applied", f"{decision.action} applied to {task_id}",
                         task_id=task_id, action=decision.action, amounts=decision.amounts())
        for hook in list(self.on_decision):
            hook(decision)
        self._ctl(task_id).notify()

    async def _add_budget(self, decision: Decision, info: PauseInfo | None) -> None:
        task_id = decision.task_id
        scope_name = info.scope if info and info.scope else f"task:{task_id}"
        scope = self.tracker.scope_named(task_id, scope_name)
        if scope is None:
            return
        extra = limits_added(scope, decision, info.dimension if info else "")
        # before any await: the pause is gone, so a check failing meanwhile would pause anew
        self.tracker.raise_limits(scope, Limits.model_validate(extra))
        if self.overdraft is not None:
            await self.overdraft.repay(scope.name, int(decision.tokens or 0),
                                       float(decision.cost_usd or 0.0), shared=scope.shared)
        stored = await self.store.get_state("budget", self._key(task_id)) or {"scopes": {}}
        stored["scopes"][scope.name] = added_up(stored["scopes"].get(scope.name, {}), extra)
        await self.store.put_state("budget", self._key(task_id), stored)
        if counts_every_process(scope):
            await self.fleet.record(scope, extra, task_id, decision.source)

    def _fleet_wide(self, task_id: str, info: PauseInfo | None = None) -> bool:
        """Whether every process on the store counts ``task_id``'s budget (a serve key),
        or the budget ``info`` paused it at (a day's)."""
        if info is not None and info.scope.startswith(("day:", "task-day:")):
            return True
        return self.tracker.has_task(task_id) and self.tracker.task_scope(task_id).shared
