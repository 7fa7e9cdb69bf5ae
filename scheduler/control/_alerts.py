"""Applying alert actions: events, per-task flags, pauses (R3.1–R3.4).

The tracker reports each threshold :class:`Crossing` once per crossing; the
gateway hands them to :meth:`AlertRuntime.apply` after every charge (and the
tracker's ``time_crossings`` before each call).  The alert policy turns a
crossing into plain-data actions; this module applies them:

* one EventBus event per crossing: ``budget_warning`` / ``budget_critical`` /
  ``budget_exceeded`` (plus ``checkpoint_requested``);
* flags the gateway and router read through :meth:`AlertRuntime.flags`:
  ``prefer_cheaper`` (warning), ``aggressive`` and ``checkpoint_requested``
  (critical), ``indicator`` (the worst level shown to people).  Crossings of a
  shared scope (session, day) flag every task;
* ``pause`` asks the :class:`PauseController` to pause the task.

It also computes the status rows (budget use per dimension and alert level)
that ``vibe-engine status`` renders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from policies.alerts import ActionKind, AlertAction, AlertInput, AlertPolicy, DefaultAlertPolicy
from scheduler.budget import Crossing, ScopeState, Tracker
from scheduler.config import AlertsConfig
from scheduler.control._decision import Decision
from scheduler.control._fleet import NOTIFIED, counts_every_process
from scheduler.control._new_day import day_is_over
from scheduler.control._pause import PauseController
from scheduler.core import BudgetExceededError, EventBus, StoreError, get_logger
from scheduler.store import put_state_if_absent

_log = get_logger("vibe_engine.alerts")

#: Alert levels from best to worst.
LEVEL_ORDER: tuple[str, ...] = ("ok", "warning", "critical", "exceeded")


def worse(a: str, b: str) -> str:
    return a if LEVEL_ORDER.index(a) >= LEVEL_ORDER.index(b) else b


@dataclass(slots=True)
class AlertFlags:
    """What the runtime should do differently for a task (read by gateway and router)."""

    prefer_cheaper: bool = False
    aggressive: bool = False
    checkpoint_requested: bool = False
    indicator: str = "ok"
    messages: list[str] = field(default_factory=list)

    def merged(self, other: AlertFlags) -> AlertFlags:
        return AlertFlags(
            self.prefer_cheaper or other.prefer_cheaper,
            self.aggressive or other.aggressive,
            self.checkpoint_requested or other.checkpoint_requested,
            worse(self.indicator, other.indicator),
            [*self.messages, *other.messages],
        )


@dataclass(frozen=True, slots=True)
class AlertStatistics:
    fired: dict[str, int]
    flagged_scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One line of ``vibe-engine status``: a dimension of a task's (or shared) scope."""

    task_id: str
    scope: str
    dimension: str
    used: float
    limit: float
    fraction: float
    level: str
    paused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def level_of(fraction: float, thresholds: AlertsConfig, warning: float | None = None) -> str:
    """The alert level reached by ``fraction`` of a limit."""
    if fraction >= thresholds.exceeded:
        return "exceeded"
    if fraction >= thresholds.critical:
        return "critical"
    if fraction >= (warning if warning is not None else thresholds.warning):
        return "warning"
    return "ok"


class AlertRuntime:
    """Applies an :class:`AlertPolicy`'s actions (see module docstring)."""

    def __init__(
        self, tracker: Tracker, events: EventBus, *, policy: AlertPolicy | None = None,
        controller: PauseController | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.tracker = tracker
        self._clock = clock
        self.events = events
        self.policy: AlertPolicy = policy or DefaultAlertPolicy()
        self.controller = controller
        self._flags: dict[str, AlertFlags] = {}
        #: The flags by scope name, read only: while no alert has set any, every task's
        #: flags are the defaults (the gateway mirrors them without a lookup per call).
        self.flagged: Mapping[str, AlertFlags] = self._flags
        self._fired: dict[str, int] = {}
        if controller is not None:
            controller.on_decision.append(self._after_decision)

    # -- flags ---------------------------------------------------------------------

    def scope_flags(self, scope: str) -> AlertFlags:
        flags = self._flags.get(scope)
        if flags is None:
            flags = self._flags[scope] = AlertFlags()
        return flags

    def flags(self, task_id: str) -> AlertFlags:
        """The task's own flags merged with those of its session and day."""
        if not self._flags:  # no scope has flags (the usual case): nothing to merge
            return AlertFlags()
        out = self._flags.get(f"task:{task_id}", AlertFlags())
        out = AlertFlags(out.prefer_cheaper, out.aggressive, out.checkpoint_requested,
                         out.indicator, list(out.messages))
        names = [self.tracker.session.name, self.tracker.day_scope().name]
        if self.tracker.has_task(task_id):  # a key's per-day scope, a grouped task's key
            names += [s.name for s in self.tracker.scopes(task_id)[1:-2]]
        for name in names:
            shared = self._flags.get(name)
            if shared is not None:
                out = out.merged(shared)
        return out

    def forget(self, task_id: str) -> None:
        """Drop an ended task's own flags (the run forgets the task)."""
        self._flags.pop(f"task:{task_id}", None)

    def consume_checkpoint_request(self, task_id: str) -> bool:
        """True once after a critical alert asked for a checkpoint (the context takes it)."""
        if not self._flags:
            return False
        flags = self._flags.get(f"task:{task_id}")
        if flags is None or not flags.checkpoint_requested:
            return False
        flags.checkpoint_requested = False
        return True

    def statistics(self) -> AlertStatistics:
        return AlertStatistics(dict(self._fired), tuple(sorted(self._flags)))

    # -- applying ------------------------------------------------------------------

    def _input(self, task_id: str, c: Crossing) -> AlertInput:
        thresholds = self.tracker.config.alerts
        threshold: float = getattr(thresholds, c.level)
        if c.dimension == "cost_usd" and c.level == "warning" and c.limit:
            scope = self._scope_state(task_id, c.scope)
            warn = scope.limits.cost_warning_usd if scope is not None else None
            if warn:
                threshold = min(warn / c.limit, thresholds.critical)
        tokens_left: int | None = None
        cost_left: float | None = None
        if task_id in self.tracker.tasks():
            rem = self.tracker.remaining(task_id)
            tokens_left, cost_left = rem.tokens, rem.cost_usd
        return AlertInput(task_id, c.scope, c.dimension, c.level, c.used, c.limit, threshold,
                          tokens_left, cost_left, self._clock())

    def _scope_state(self, task_id: str, scope: str) -> ScopeState | None:
        return self.tracker.scope_named(task_id, scope)

    async def apply(self, task_id: str, crossings: Iterable[Crossing]) -> list[AlertAction]:
        """Apply the policy's actions for each crossing of ``task_id``'s charge."""
        applied: list[AlertAction] = []
        for c in crossings:
            alert = self._input(task_id, c)
            actions = self.policy.actions(alert)
            told = await self._first_to_tell(task_id, c, actions)
            if not told:
                actions = tuple(a for a in actions if a.kind is not ActionKind.NOTIFY)
            self._emit(task_id, c, alert, actions, told=told)
            for action in actions:
                await self._apply_one(task_id, c, action, told=told)
            applied.extend(actions)
        return applied

    async def _first_to_tell(self, task_id: str, c: Crossing,
                             actions: tuple[AlertAction, ...]) -> bool:
        """Whether this process tells people of ``c`` (R3.1-R3.3): of a budget every
        process on the store counts (the day, a ``serve`` key's), only the first process
        to report the warning or escalation does (or a crossing it notifies of) --
        claimed in the store, keyed by scope (a day's names its day), dimension, level
        and limit (a raised limit is told anew); each still applies the other actions.
        An exceeded crossing pauses a task of this process: each process tells its own."""
        if c.level == "exceeded" and not any(a.kind is ActionKind.NOTIFY for a in actions):
            return True
        scope = self._scope_state(task_id, c.scope)
        if scope is None or not counts_every_process(scope):
            return True
        try:
            return await put_state_if_absent(
                self.tracker.store, NOTIFIED, f"{c.scope}#{c.dimension}#{c.level}#{c.limit:.12g}",
                {"task_id": task_id, "session_id": self.tracker.session_id, "used": c.used})
        except StoreError:  # who else told them is not known: told once more, not never
            return True

    def _emit(
        self, task_id: str, c: Crossing, alert: AlertInput, actions: tuple[AlertAction, ...],
        *, told: bool = True,
    ) -> None:
        message = next((a.message for a in actions if a.kind in (ActionKind.LOG,
                        ActionKind.NOTIFY)), actions[0].message if actions else "")
        self._fired[c.level] = self._fired.get(c.level, 0) + 1
        fields: dict[str, Any] = {"scope": c.scope, "dimension": c.dimension,
                                  "used": c.used, "limit": c.limit, "percent": alert.percent}
        if not told:  # another process on the store told people (its event, its history)
            _log.debug(f"budget_{c.level}_told_elsewhere", message=message, task_id=task_id,
                       **fields)
            return
        self.events.emit(
            f"budget_{c.level}", message, task_id=task_id,
            level="error" if c.level == "exceeded" else "warning", **fields,
            tokens_left=alert.tokens_left, cost_left=alert.cost_left,
            actions=[a.kind.value for a in actions],
        )

    async def _apply_one(self, task_id: str, c: Crossing, action: AlertAction, *,
                         told: bool = True) -> None:
        flags = self.scope_flags(c.scope)
        kind = action.kind
        if kind is ActionKind.LOG:
            (_log.warning if told else _log.debug)(
                "budget_alert", message=action.message, task_id=task_id, scope=c.scope,
                dimension=c.dimension)
        elif kind is ActionKind.INDICATOR:
            flags.indicator = worse(flags.indicator, action.level)
            flags.messages.append(action.message)
        elif kind is ActionKind.PREFER_CHEAPER:
            flags.prefer_cheaper = True
        elif kind is ActionKind.AGGRESSIVE:
            flags.prefer_cheaper = flags.aggressive = True
        elif kind is ActionKind.CHECKPOINT:
            self.scope_flags(f"task:{task_id}").checkpoint_requested = True
            self.events.emit("checkpoint_requested", action.message, task_id=task_id,
                             scope=c.scope, dimension=c.dimension)
        elif kind is ActionKind.PAUSE and self.controller is not None and not day_is_over(
                c.scope, self.tracker.today()):  # a call that day admitted ended after it
            await self.controller.request_pause(
                task_id, action.message, error=_as_error(c),
            )

    def _after_decision(self, decision: Decision) -> None:
        """Budget was added: recompute flags of the task's scopes from current use."""
        if decision.action not in ("add_budget", "resume") or (
                decision.task_id not in self.tracker.tasks()):
            return
        for scope in self.tracker.scopes(decision.task_id):
            flags = self._flags.get(scope.name)
            if flags is None:
                continue
            level = scope_level(self.tracker, scope)
            flags.indicator = level
            flags.messages.clear()
            flags.prefer_cheaper = level != "ok"
            flags.aggressive = level in ("critical", "exceeded")


def _as_error(c: Crossing) -> BudgetExceededError:
    return BudgetExceededError(c.scope, c.dimension, c.used, c.limit)


def scope_level(tracker: Tracker, scope: ScopeState) -> str:
    """The worst alert level over every limited dimension of ``scope``."""
    level = "ok"
    for row in scope_rows(scope, "", tracker.config.alerts):
        level = worse(level, row.level)
    return level


def scope_rows(
    scope: ScopeState, task_id: str, thresholds: AlertsConfig, *,
    elapsed_s: float | None = None, paused: bool = False,
) -> list[StatusRow]:
    """Status rows of one scope: each limited dimension with used, limit and level.

    ``elapsed_s`` (a task's running time) adds a ``time_s`` row when limited.
    """
    rows: list[StatusRow] = []
    for dim in scope.dimensions():
        lim = scope.limit(dim)
        if not lim:
            continue
        used = scope.used(dim)
        warn = None
        if dim == "cost_usd" and scope.limits.cost_warning_usd:
            warn = min(scope.limits.cost_warning_usd / lim, thresholds.critical)
        frac = used / lim
        rows.append(StatusRow(task_id, scope.name, dim, used, lim, frac,
                              level_of(frac, thresholds, warn), paused))
    if elapsed_s is not None and scope.limits.time_s:
        lim = scope.limits.time_s
        rows.append(StatusRow(task_id, scope.name, "time_s", elapsed_s, lim, elapsed_s / lim,
                              level_of(elapsed_s / lim, thresholds), paused))
    return rows

