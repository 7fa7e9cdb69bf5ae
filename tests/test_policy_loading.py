"""Loading the policies named in ``[policies]`` (R7.4; R5.7 for ``policies.victim``).

One loader resolves all six settings, builds each policy with its own parameter
model, checks it against its Protocol, and turns any failure into one
ConfigError line naming the setting and the plugin string.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from policies.alerts import DefaultAlertPolicy
from policies.complexity import ScoredComplexity
from policies.fairness import FairnessParams, PriorityWithFairness
from policies.replan import DefaultReplanPolicy
from policies.routing import CheapestCapableRouting, RoutingParams
from policies.victim import LowestPriorityVictim
from scheduler.config import BUILTIN_POLICIES, VibeConfig, load_policies
from scheduler.core import ConfigError
from scheduler.runtime import Orchestrator
from scheduler.testing import ScriptedProvider

SETTINGS = ("allocation", "victim", "complexity", "routing", "alerts", "replan")
ROOT = Path(__file__).resolve().parents[1]


class ExplodingPolicy:
    """A plugin whose constructor fails."""

    def __init__(self) -> None:
        raise ValueError("bad\nparameters")


#: A ready-made instance named by ``module:attribute``.
READY_VICTIM = LowestPriorityVictim()


def test_r7_4_defaults_load_as_one_frozen_bundle() -> None:
    loaded = load_policies(VibeConfig())
    assert isinstance(loaded.allocation, PriorityWithFairness)
    assert isinstance(loaded.victim, LowestPriorityVictim)
    assert isinstance(loaded.complexity, ScoredComplexity)
    assert isinstance(loaded.routing, CheapestCapableRouting)
    assert isinstance(loaded.alerts, DefaultAlertPolicy)
    assert isinstance(loaded.replan, DefaultReplanPolicy)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.victim = LowestPriorityVictim()  # type: ignore[misc]


def test_r7_4_every_builtin_short_name_loads() -> None:
    assert set(BUILTIN_POLICIES) == set(SETTINGS)
    for setting, names in BUILTIN_POLICIES.items():
        for name, cls in names.items():
            loaded = load_policies(VibeConfig(policies={setting: name}))
            assert type(getattr(loaded, setting)) is cls, (setting, name)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("plugin", [
    "no_such_module:Policy", "policies.victim:NoSuchClass", "no_such_short_name",
])
def test_r7_4_an_unknown_policy_is_one_line_naming_setting_and_plugin(
    setting: str, plugin: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_policies(VibeConfig(policies={setting: plugin}))
    assert (info.value.field, info.value.value) == (f"policies.{setting}", plugin)
    text = str(info.value)
    assert "\n" not in text and f"policies.{setting}" in text and plugin in text


def test_r5_7_a_class_that_is_not_a_victim_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match="VictimPolicy protocol") as info:
        load_policies(VibeConfig(policies={"victim": "policies.alerts:DefaultAlertPolicy"}))
    assert info.value.field == "policies.victim"


def test_r7_4_a_constructor_that_fails_is_one_config_error_line() -> None:
    plugin = "tests.test_policy_loading:ExplodingPolicy"
    with pytest.raises(ConfigError) as info:
        load_policies(VibeConfig(policies={"replan": plugin}))
    assert info.value.field == "policies.replan"
    assert str(info.value).endswith("cannot be built: ValueError: bad parameters")


def test_r7_4_a_ready_made_instance_is_used_as_it_is() -> None:
    config = VibeConfig(policies={"victim": "tests.test_policy_loading:READY_VICTIM"})
    assert load_policies(config).victim is READY_VICTIM


def test_r7_4_policies_are_built_with_their_own_parameter_models() -> None:
    """``routing.*`` and ``allocator.*`` keys reach the policies as the policies' own models."""
    config = VibeConfig(routing={"downgrade_above": 0.6, "quality_floor": 0.3},
                        allocator={"demotion_at": 0.8, "fairness_quantum_tokens": 50})
    loaded = load_policies(config)
    assert isinstance(loaded.routing, CheapestCapableRouting)
    assert loaded.routing.params == RoutingParams(downgrade_above=0.6)
    assert isinstance(loaded.allocation, PriorityWithFairness)
    assert loaded.allocation.params == FairnessParams(demotion_at=0.8, rank_quantum=50)


def test_r5_7_orchestrator_refuses_an_unknown_victim_policy(tmp_path: Path) -> None:
    """R5.7: a victim policy that does not exist stops construction; nothing is written."""
    config = VibeConfig(state_dir=tmp_path / "st", store="sqlite",
                        policies={"victim": "no_such_module:Victim"})
    with pytest.raises(ConfigError) as info:
        Orchestrator(config, provider=ScriptedProvider(), agents={})
    assert info.value.field == "policies.victim"
    assert not (tmp_path / "st").exists()


def test_policies_never_import_scheduler() -> None:
    """``policies/`` is below all of scheduler: it owns its parameter models (TYPE_CHECKING too)."""
    for path in sorted((ROOT / "policies").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "scheduler" for n in names), path.name
