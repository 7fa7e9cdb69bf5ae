"""Loading the policies named in ``[policies]``: one way for all six (R7.4, STYLE.md 8).

Each setting (``policies.allocation``, ``.victim``, ``.complexity``,
``.routing``, ``.alerts``, ``.replan``) names a policy by a built-in short name
(:data:`BUILTIN_POLICIES`), an entry point of the group ``vibe_engine.policies``
or ``module:Class``.  :func:`load_policies` resolves each name once, builds the
policy — with its own parameter model when the config has keys for it
(``allocator.*`` for allocation, ``routing.*`` for routing), else with its
defaults — and checks it against the setting's Protocol.  Any failure is one
:class:`~scheduler.ConfigError` naming the setting and the plugin string, so a
wrong name stops start-up instead of being ignored.

A name may also refer to a ready-made instance (``module:POLICY``), used as it
is, or to a factory function, called like a class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from policies.alerts import AlertPolicy, DefaultAlertPolicy
from policies.complexity import ComplexityPolicy, ScoredComplexity
from policies.fairness import AllocationPolicy, Fifo, PriorityWithFairness
from policies.replan import DefaultReplanPolicy, ReplanPolicy
from policies.routing import CheapestCapableRouting, RoutingParams, RoutingPolicy
from policies.victim import LowestPriorityVictim, VictimPolicy
from scheduler.config._config import VibeConfig
from scheduler.core import ConfigError, resolve_object

__all__ = ["BUILTIN_POLICIES", "ENTRY_POINT_GROUP", "LoadedPolicies", "load_policies"]

#: Where installed packages publish policies under a short name.
ENTRY_POINT_GROUP = "vibe_engine.policies"

#: Short names accepted for each setting, besides entry points and ``module:Class``.
BUILTIN_POLICIES: Mapping[str, Mapping[str, type[Any]]] = {
    "allocation": {"priority_fairness": PriorityWithFairness, "fifo": Fifo},
    "victim": {"lowest_priority": LowestPriorityVictim},
    "complexity": {"scored": ScoredComplexity},
    "routing": {"cheapest_capable": CheapestCapableRouting},
    "alerts": {"default": DefaultAlertPolicy},
    "replan": {"default": DefaultReplanPolicy},
}


@dataclass(frozen=True, slots=True)
class LoadedPolicies:
    """The six policies of one configuration, built and checked (see the module docstring)."""

    allocation: AllocationPolicy
    victim: VictimPolicy
    complexity: ComplexityPolicy
    routing: RoutingPolicy
    alerts: AlertPolicy
    replan: ReplanPolicy


@dataclass(frozen=True, slots=True)
class _Setting:
    """What loading one setting needs: its Protocol and where its parameters come from."""

    protocol: type[Any]
    #: the methods the Protocol asks for, shown when a class does not match it.
    shape: str
    params: Callable[[VibeConfig], BaseModel | None] = lambda config: None


def _routing_params(config: VibeConfig) -> RoutingParams:
    keys = set(RoutingParams.model_fields)
    return RoutingParams.model_validate(config.routing.model_dump(include=keys))


_SETTINGS: Mapping[str, _Setting] = {
    "allocation": _Setting(
        AllocationPolicy, "priority, priority_changes_at, rank, service, order",
        lambda config: config.allocator.policy_params()),
    "victim": _Setting(VictimPolicy, "choose(candidates)"),
    "complexity": _Setting(ComplexityPolicy, "assess, learn, confirm"),
    "routing": _Setting(RoutingPolicy, "select(data)", _routing_params),
    "alerts": _Setting(AlertPolicy, "actions(alert)"),
    "replan": _Setting(ReplanPolicy, "plan(data)"),
}


def load_policies(config: VibeConfig) -> LoadedPolicies:
    """Resolve, build and check every policy ``config`` names; ConfigError on the first bad one."""
    return LoadedPolicies(
        allocation=_load(config, "allocation"),
        victim=_load(config, "victim"),
        complexity=_load(config, "complexity"),
        routing=_load(config, "routing"),
        alerts=_load(config, "alerts"),
        replan=_load(config, "replan"),
    )


def _load(config: VibeConfig, name: str) -> Any:
    setting = _SETTINGS[name]
    field = f"policies.{name}"
    plugin: str = getattr(config.policies, name)
    obj = resolve_object(plugin, field=field, builtins=dict(BUILTIN_POLICIES[name]),
                         group=ENTRY_POINT_GROUP)
    if not isinstance(obj, type) and isinstance(obj, setting.protocol):
        return obj  # a ready-made instance
    if not isinstance(obj, type):
        # only a class is called: an import string naming a function (``os:abort``) must
        # not run arbitrary code while the config is checked
        raise ConfigError(field, plugin, f"is a {type(obj).__name__}, not a policy class")
    params = setting.params(config)
    try:
        policy = obj() if params is None else obj(params)
    except Exception as exc:  # a plugin's constructor may raise anything
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(field, plugin, f"cannot be built: {reason}") from exc
    if not isinstance(policy, setting.protocol):
        raise ConfigError(field, plugin, f"does not implement the "
                          f"{setting.protocol.__name__} protocol ({setting.shape})")
    return policy
