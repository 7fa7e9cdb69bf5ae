"""An example policy: checkpoint already at the warning threshold.

Used by docs/guide-policy.md and run by the test suite
(tests/test_docs_examples.py).  Name it in config by import string::

    [policies]
    alerts = "early_checkpoint_policy:EarlyCheckpointPolicy"

A policy is a pure, synchronous class matching a ``typing.Protocol``
(here :class:`policies.alerts.AlertPolicy`): it gets plain data and returns
a decision; it never awaits, never reads a clock, and does no I/O.  Its
parameters are a frozen pydantic model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from policies.alerts import ActionKind, AlertAction, AlertInput, DefaultAlertPolicy


class EarlyCheckpointParams(BaseModel):
    """Which dimensions get the early checkpoint (all when empty)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dimensions: tuple[str, ...] = ()


class EarlyCheckpointPolicy:
    """The default alert actions, plus a forced checkpoint at the warning level."""

    def __init__(self, params: EarlyCheckpointParams | None = None) -> None:
        self.params = params or EarlyCheckpointParams()
        self._default = DefaultAlertPolicy()

    def actions(self, alert: AlertInput) -> tuple[AlertAction, ...]:
        actions = self._default.actions(alert)
        wanted = not self.params.dimensions or alert.dimension in self.params.dimensions
        if alert.level == "warning" and wanted:
            actions += (AlertAction(ActionKind.CHECKPOINT, "warning",
                                    f"early checkpoint at {alert.percent} % of {alert.dimension}"),)
        return actions
