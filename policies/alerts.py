"""Alert policy: what to do when a budget threshold is crossed (R3.1–R3.4).

The tracker reports each :class:`~scheduler.Crossing` once per crossing; an
alert policy maps it to a list of plain-data :class:`AlertAction`s that the
runtime (``scheduler.control._alerts``) applies.  The policy is pure: it never awaits,
never reads a clock and performs no I/O, so it is unit-tested without an
event loop.

Default mapping (SPEC R3.2–R3.4):

* warning (70 %): log "budget at 70 %, consider wrapping up", show a warning
  indicator, ask routing for a cheaper model;
* critical (90 %): notify with the remaining tokens and cost and the advice to
  pause after the current step, aggressive cost reduction, force a checkpoint;
* exceeded (100 %): pause the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict


class ActionKind(StrEnum):
    """What the runtime does for one alert action."""

    LOG = "log"
    INDICATOR = "indicator"
    PREFER_CHEAPER = "prefer_cheaper"
    NOTIFY = "notify"
    AGGRESSIVE = "aggressive"
    CHECKPOINT = "checkpoint"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class AlertAction:
    """One action for the runtime; ``message`` is for people, ``data`` for machines."""

    kind: ActionKind
    level: str
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlertInput:
    """Everything a policy may look at for one crossing (plain data).

    ``threshold`` is the configured fraction of the level (0.7 / 0.9 / 1.0);
    ``tokens_left``/``cost_left`` are the task's remaining budget (``None`` =
    unlimited); ``now`` is the loop clock, for policies that care about time.
    """

    task_id: str
    scope: str
    dimension: str
    level: str
    used: float
    limit: float
    threshold: float
    tokens_left: int | None = None
    cost_left: float | None = None
    now: float = 0.0

    @property
    def percent(self) -> int:
        return round(self.threshold * 100)


class AlertPolicyParams(BaseModel):
    """Switches of :class:`DefaultAlertPolicy` (all on by default, per R3.2–R3.4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefer_cheaper_at_warning: bool = True
    aggressive_at_critical: bool = True
    checkpoint_at_critical: bool = True
    pause_at_exceeded: bool = True


@runtime_checkable
class AlertPolicy(Protocol):
    """Maps one threshold crossing to the actions the runtime applies."""

    def actions(self, alert: AlertInput) -> tuple[AlertAction, ...]: ...


def _fmt_tokens(tokens: int | None) -> str:
    return "unlimited" if tokens is None else f"{tokens:,}"


def _fmt_cost(cost: float | None) -> str:
    return "unlimited" if cost is None else f"${cost:.2f}"


class DefaultAlertPolicy:
    """The R3.2–R3.4 mapping; see the module docstring."""

    def __init__(self, params: AlertPolicyParams | None = None) -> None:
        self.params = params or AlertPolicyParams()

    def actions(self, alert: AlertInput) -> tuple[AlertAction, ...]:
        if alert.level == "warning":
            return self._warning(alert)
        if alert.level == "critical":
            return self._critical(alert)
        if alert.level == "exceeded":
            return self._exceeded(alert)
        return ()

    def _where(self, alert: AlertInput) -> dict[str, Any]:
        return {"scope": alert.scope, "dimension": alert.dimension,
                "used": alert.used, "limit": alert.limit}

    def _warning(self, alert: AlertInput) -> tuple[AlertAction, ...]:
        msg = f"budget at {alert.percent} %, consider wrapping up"
        out = [
            AlertAction(ActionKind.LOG, "warning", msg, self._where(alert)),
            AlertAction(ActionKind.INDICATOR, "warning", msg),
        ]
        if self.params.prefer_cheaper_at_warning:
            out.append(AlertAction(ActionKind.PREFER_CHEAPER, "warning",
                                   "switch routing to a cheaper model"))
        return tuple(out)

    def _critical(self, alert: AlertInput) -> tuple[AlertAction, ...]:
        msg = (
            f"budget at {alert.percent} % ({alert.dimension} of {alert.scope}): "
            f"{_fmt_tokens(alert.tokens_left)} tokens and {_fmt_cost(alert.cost_left)} left; "
            "consider pausing after the current step"
        )
        data = {**self._where(alert), "tokens_left": alert.tokens_left,
                "cost_left": alert.cost_left}
        out = [
            AlertAction(ActionKind.NOTIFY, "critical", msg, data),
            AlertAction(ActionKind.INDICATOR, "critical", msg),
        ]
        if self.params.aggressive_at_critical:
            out.append(AlertAction(ActionKind.AGGRESSIVE, "critical",
                                   "aggressive cost reduction"))
        if self.params.checkpoint_at_critical:
            out.append(AlertAction(ActionKind.CHECKPOINT, "critical", "force a checkpoint"))
        return tuple(out)

    def _exceeded(self, alert: AlertInput) -> tuple[AlertAction, ...]:
        msg = (
            f"budget exceeded ({alert.dimension} of {alert.scope}: "
            f"{alert.used:g} of {alert.limit:g}); pausing for a decision"
        )
        out = [AlertAction(ActionKind.INDICATOR, "exceeded", msg)]
        if self.params.pause_at_exceeded:
            out.append(AlertAction(ActionKind.PAUSE, "exceeded", msg, self._where(alert)))
        return tuple(out)
