"""R3.1–R3.4: the pure alert policy (no event loop)."""

from __future__ import annotations

import pytest

from policies.alerts import (
    ActionKind,
    AlertInput,
    AlertPolicy,
    AlertPolicyParams,
    DefaultAlertPolicy,
)


def _alert(level: str, threshold: float, **kw: object) -> AlertInput:
    base: dict[str, object] = {
        "task_id": "t", "scope": "task:t", "dimension": "tokens", "level": level,
        "used": threshold * 1000, "limit": 1000.0, "threshold": threshold,
        "tokens_left": 100, "cost_left": 0.05,
    }
    base.update(kw)
    return AlertInput(**base)  # type: ignore[arg-type]


def kinds(alert: AlertInput, policy: AlertPolicy | None = None) -> list[ActionKind]:
    return [a.kind for a in (policy or DefaultAlertPolicy()).actions(alert)]


def test_r3_2_warning_logs_indicates_and_prefers_cheaper() -> None:
    actions = DefaultAlertPolicy().actions(_alert("warning", 0.7))
    assert [a.kind for a in actions] == [
        ActionKind.LOG, ActionKind.INDICATOR, ActionKind.PREFER_CHEAPER,
    ]
    assert actions[0].message == "budget at 70 %, consider wrapping up"
    assert actions[0].data["dimension"] == "tokens"


def test_r3_3_critical_notifies_remaining_and_advice_reduces_cost_and_checkpoints() -> None:
    actions = DefaultAlertPolicy().actions(_alert("critical", 0.9, tokens_left=1234,
                                                  cost_left=0.256))
    assert [a.kind for a in actions] == [
        ActionKind.NOTIFY, ActionKind.INDICATOR, ActionKind.AGGRESSIVE, ActionKind.CHECKPOINT,
    ]
    notify = actions[0]
    assert "1,234 tokens" in notify.message
    assert "$0.26" in notify.message
    assert "pausing after the current step" in notify.message
    assert notify.data["tokens_left"] == 1234
    assert notify.data["cost_left"] == pytest.approx(0.256)


def test_r3_3_critical_with_unlimited_remaining_says_so() -> None:
    msg = DefaultAlertPolicy().actions(_alert("critical", 0.9, tokens_left=None,
                                              cost_left=None))[0].message
    assert "unlimited tokens and unlimited left" in msg


def test_r3_4_exceeded_pauses() -> None:
    actions = DefaultAlertPolicy().actions(_alert("exceeded", 1.0))
    assert [a.kind for a in actions] == [ActionKind.INDICATOR, ActionKind.PAUSE]
    assert "pausing for a decision" in actions[1].message


def test_r3_1_threshold_percent_comes_from_input() -> None:
    msg = DefaultAlertPolicy().actions(_alert("warning", 0.6))[0].message
    assert msg == "budget at 60 %, consider wrapping up"


def test_r3_params_switch_actions_off() -> None:
    policy = DefaultAlertPolicy(AlertPolicyParams(
        prefer_cheaper_at_warning=False, aggressive_at_critical=False,
        checkpoint_at_critical=False, pause_at_exceeded=False,
    ))
    assert ActionKind.PREFER_CHEAPER not in kinds(_alert("warning", 0.7), policy)
    crit = kinds(_alert("critical", 0.9), policy)
    assert ActionKind.AGGRESSIVE not in crit and ActionKind.CHECKPOINT not in crit
    assert ActionKind.PAUSE not in kinds(_alert("exceeded", 1.0), policy)


def test_r3_policy_matches_protocol_and_ignores_unknown_level() -> None:
    policy = DefaultAlertPolicy()
    assert isinstance(policy, AlertPolicy)
    assert policy.actions(_alert("ok", 0.1)) == ()


def test_r3_alert_policy_is_resolved_from_config() -> None:
    """R7.4: ``policies.alerts`` names the policy; a non-policy is a config error."""
    from scheduler import ConfigError, VibeConfig
    from scheduler.config import load_policies

    assert isinstance(load_policies(VibeConfig()).alerts, DefaultAlertPolicy)
    assert isinstance(load_policies(VibeConfig(policies={"alerts": "default"})).alerts,
                      DefaultAlertPolicy)
    with pytest.raises(ConfigError, match="AlertPolicy protocol"):
        load_policies(VibeConfig(policies={"alerts": "policies.alerts:AlertPolicyParams"}))
