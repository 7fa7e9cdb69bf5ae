"""Choosing the allocation policy named in config (STYLE.md 8) and its parameters."""

from __future__ import annotations

from typing import Any

from policies.fairness import AllocationPolicy, FairnessParams, Fifo, PriorityWithFairness
from scheduler.config._config import AllocatorConfig
from scheduler.core._resolve import resolve_object

__all__ = ["ALLOCATION_POLICIES", "fairness_params", "make_allocation_policy"]


ALLOCATION_POLICIES: dict[str, type[Any]] = {
    "priority_fairness": PriorityWithFairness,
    "fifo": Fifo,
}


def fairness_params(config: AllocatorConfig) -> FairnessParams:
    """The policy parameters that live in :class:`AllocatorConfig`."""
    return FairnessParams(
        aging_after_s=config.aging_after_s,
        demotion_at=config.demotion_at,
        output_weight=config.output_weight,
        rank_quantum=config.fairness_quantum_tokens,
    )


def make_allocation_policy(name: str, config: AllocatorConfig) -> AllocationPolicy:
    """Resolve ``name`` (built-in, entry point or ``module:Class``) and build it."""
    cls = resolve_object(
        name, field="policies.allocation", builtins=ALLOCATION_POLICIES,
        group="vibe_engine.policies",
    )
    policy: AllocationPolicy = cls(fairness_params(config))
    return policy
