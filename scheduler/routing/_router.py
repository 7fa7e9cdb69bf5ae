"""The router: picks each call's model (R4.1, R4.2, R6.1) and corrects wrong picks (R4.3).

The gateway asks :meth:`Router.choose` before every model call and tells
:meth:`Router.report_outcome` how it went.  Choosing assesses the task with
the :class:`~policies.complexity.ComplexityPolicy`, asks the model health for
the tiers this task's priority may use, and lets the
:class:`~policies.routing.RoutingPolicy` decide.  Correcting: haiku failing
twice (a failed call, a task that failed after the model finished, or
incomplete output), or any output judged below quality 0.5, upgrades the task
to the next tier ("upgrading from X to Y due to quality issues") and teaches
the complexity policy that similar tasks need that tier.  What the policy
learned is saved to the store (:meth:`Router.save_learned`) and read back by
the next run (:meth:`Router.load_learned`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from policies.complexity import Assessment, ComplexityPolicy, TaskInfo
from policies.routing import RouteDecision, RoutingInput, RoutingPolicy
from scheduler.budget import TaskProfile
from scheduler.config import PRIORITY_VALUES, TaskSpec, VibeConfig, load_policies
from scheduler.core import EventBus, loop_time
from scheduler.routing._catalog import ModelCatalog
from scheduler.routing._health import HealthMonitor
from scheduler.store import Store
from scheduler.tasks import TaskHandle

#: How many tasks' :meth:`Router.info` is kept (about the tasks running at once).
_INFOS_KEPT = 4096
#: How many decisions :meth:`Router.choose` keeps.
_CHOSEN_KEPT = 1024


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A correction (R4.3): the task's next calls go to ``to_model``."""

    task_id: str
    from_model: str
    to_model: str
    reason: str


@dataclass(frozen=True, slots=True)
class RouterStatistics:
    decisions: int
    by_model: Mapping[str, int]
    downgrades: int
    substitutions: int
    upgrades: int


def task_info(handle: TaskHandle, hints: Mapping[str, Any] | None = None) -> TaskInfo:
    """Routing's view of a task; ``hints`` may set expected_output_tokens, reasoning_depth."""
    hints = hints or {}
    spec = handle.spec
    tokens = hints.get("expected_output_tokens", spec.params.get("expected_output_tokens"))
    depth = hints.get("reasoning_depth", spec.params.get("reasoning_depth"))
    return TaskInfo(
        task_id=spec.id, task_type=handle.profile.task_type,
        complexity=handle.profile.complexity, prompt=spec.prompt,
        expected_output_tokens=int(tokens) if tokens is not None else None,
        reasoning_depth=depth if depth in ("direct", "multi_step", "architecture") else None,
        requires_high_capability=spec.requires_high_capability,
        priority=PRIORITY_VALUES[spec.priority],
    )


def companion(policy: object, method: str, name: str) -> Any:
    """``policy``'s attribute ``name`` when the class defining its ``method`` defines
    ``name`` too, else None: a subclass overriding ``method`` alone would otherwise be
    answered by its base's shortcut."""
    def owner(attr: str) -> type | None:
        return next((c for c in type(policy).__mro__ if attr in vars(c)), None)

    found = owner(name)
    return getattr(policy, name) if found is not None and found is owner(method) else None


class Router:
    """Model choice and correction for every call (see the module docstring)."""

    def __init__(
        self,
        config: VibeConfig,
        *,
        bus: EventBus,
        health: HealthMonitor | None = None,
        catalog: ModelCatalog | None = None,
        complexity: ComplexityPolicy | None = None,
        policy: RoutingPolicy | None = None,
        clock: Callable[[], float] = loop_time,
    ) -> None:
        self.config = config
        self.bus = bus
        self.catalog = catalog or ModelCatalog(config)
        self.health = health or HealthMonitor(config, bus, catalog=self.catalog, clock=clock)
        if complexity is None or policy is None:
            loaded = load_policies(config)
            complexity, policy = complexity or loaded.complexity, policy or loaded.routing
        self.complexity: ComplexityPolicy = complexity
        self.policy: RoutingPolicy = policy
        #: What of the budget fraction the policy's decisions depend on, when the class
        #: deciding them says (``budget_key``): then a decision is reused for every call
        #: whose input is alike in what the decision depends on.
        self._budget_key: Callable[[float], object] | None = companion(policy, "select",
                                                                       "budget_key")
        #: Decisions by what they depend on (see :meth:`choose`), with the assessment
        #: named by id in the key.
        self._chosen: dict[tuple[object, ...], tuple[Assessment, RouteDecision]] = {}
        self._failures: Counter[str] = Counter()
        self._min_tier: dict[str, str] = {}
        self._by_model: Counter[str] = Counter()
        self._decisions = self._downgrades = self._substitutions = self._upgrades = 0
        #: Something was learned or confirmed since the last :meth:`save_learned`.
        self._learned_changed = False
        # each tier's substitutes per task type: the catalog's, fixed by the config
        self._substitutes: dict[str, Mapping[str, list[str]]] = {}
        #: Routing's view of each task (:meth:`info`) with the spec and profile it was
        #: made from: every routed call asks for it, and neither changes during a task.
        self._infos: dict[str, tuple[TaskSpec, TaskProfile, TaskInfo]] = {}

    def info(self, handle: TaskHandle) -> TaskInfo:
        """``task_info(handle)``, made once per task: a spec and a profile are frozen, so
        the view is made again only when the handle holds another one."""
        spec, profile = handle.spec, handle.profile
        found = self._infos.get(spec.id)
        if found is not None and found[0] is spec and found[1] is profile:
            return found[2]
        made = task_info(handle)
        if len(self._infos) >= _INFOS_KEPT:
            self._infos.clear()  # bounded: a router used without forget() (serve, tests)
        self._infos[spec.id] = (spec, profile, made)
        return made

    # -- choosing (R4.1, R4.2, R6.1) ---------------------------------------------------
    def choose(
        self, task: TaskInfo, budget_fraction: float, priority: int | None = None, *,
        over_budget: frozenset[str] = frozenset(),
    ) -> RouteDecision:
        """The model of the next call of ``task`` when ``budget_fraction`` of its budget is used.

        ``over_budget``: tiers whose per-model budget cannot cover the call (R6.7); they are
        routed around like unavailable ones unless nothing else is left.
        """
        prio = task.priority if priority is None else priority
        usable = self.health.usable(prio)
        if over_budget and usable - over_budget:
            usable -= over_budget
        assessment, min_tier = self.complexity.assess(task), self._min_tier.get(task.task_id)
        budget_key = self._budget_key
        if budget_key is None:
            decision = self._select(task, assessment, budget_fraction, usable, min_tier,
                                    over_budget)
        else:  # the usual call: decided already for a call alike (of any task)
            key = (task.task_type, task.requires_high_capability, id(assessment), usable,
                   over_budget, min_tier, budget_key(budget_fraction))
            found = self._chosen.get(key)
            if found is not None and found[0] is assessment:
                decision = found[1]
            else:
                decision = self._select(task, assessment, budget_fraction, usable, min_tier,
                                        over_budget)
                if len(self._chosen) >= _CHOSEN_KEPT:
                    self._chosen.clear()  # bounded: learned scores keep making new inputs
                self._chosen[key] = (assessment, decision)  # kept: its id is not reused
        self._decisions += 1
        self._by_model[decision.model] += 1
        self._downgrades += decision.downgraded
        self._substitutions += decision.substituted
        return decision

    def _select(self, task: TaskInfo, assessment: Assessment, budget_fraction: float,
                usable: frozenset[str], min_tier: str | None,
                over_budget: frozenset[str]) -> RouteDecision:
        return self.policy.select(RoutingInput(
            task=task, assessment=assessment, budget_fraction=budget_fraction,
            tiers=self.catalog.tiers, usable=usable,
            substitutes=self._substitutes_for(task.task_type), min_tier=min_tier,
            over_budget=over_budget,
        ))

    def assess(self, task: TaskInfo) -> Assessment:
        """The complexity policy's assessment of ``task`` (the policy keeps what it works out:
        the default one shares it between tasks alike until it learns something)."""
        return self.complexity.assess(task)

    def _substitutes_for(self, task_type: str) -> Mapping[str, list[str]]:
        subs = self._substitutes.get(task_type)
        if subs is None:
            subs = self._substitutes[task_type] = {
                t: self.catalog.substitutes(t, task_type) for t in self.catalog.tiers}
        return subs

    def min_tier(self, task_id: str) -> str | None:
        """The tier a correction raised ``task_id`` to, if any."""
        return self._min_tier.get(task_id)

    # -- correcting (R4.3) -------------------------------------------------------------
    def report_outcome(
        self, task: TaskInfo, model: str, *, success: bool, quality: float | None = None,
        complete: bool = True,
    ) -> Upgrade | None:
        """Tell the router how a call (or a whole attempt) on ``model`` went.

        Returns the :class:`Upgrade` when this outcome moves the task up a tier.
        """
        params = self.config.routing
        if quality is not None:
            self.health.record_satisfaction(model, quality)
        low_quality = quality is not None and quality < params.quality_floor
        failed = not success or not complete
        reason = ""
        if low_quality:
            reason = f"quality {quality:.2f} < {params.quality_floor:g}"
        elif failed and model == self.catalog.cheapest:
            self._failures[task.task_id] += 1
            n = self._failures[task.task_id]
            if n >= params.haiku_failures_before_upgrade:
                reason = f"{model} failed {n} times" + ("" if complete else " (incomplete output)")
        if not reason:
            if not failed and self.complexity.confirm(task, model) is not False:
                self._learned_changed = True  # saved when the task ends
            return None
        return self._upgrade(task, model, reason)

    def _upgrade(self, task: TaskInfo, model: str, reason: str) -> Upgrade | None:
        target = self.catalog.up(model)
        if target is None:
            self.bus.emit("routing_no_upgrade", f"{model} is the strongest tier; {reason}",
                          task_id=task.task_id, level="warning", model=model)
            return None
        current = self._min_tier.get(task.task_id)
        if current is None or self.catalog.rank(target) > self.catalog.rank(current):
            self._min_tier[task.task_id] = target
        self._failures.pop(task.task_id, None)
        self._upgrades += 1
        self.complexity.learn(task, target)
        self._learned_changed = True
        self.bus.emit(
            "routing_upgrade", f"upgrading from {model} to {target} due to quality issues",
            task_id=task.task_id, level="warning", from_model=model, to_model=target,
            reason=reason,
        )
        return Upgrade(task.task_id, model, target, reason)

    # -- persistence (R4.3) ------------------------------------------------------------
    async def load_learned(self, store: Store) -> None:
        """Restore what the complexity policy learned in earlier runs on ``store``."""
        restore = getattr(self.complexity, "restore", None)
        if restore is None:
            return
        data = await store.get_state("routing", "complexity")
        if data and isinstance(data.get("learned"), dict):
            restore(data["learned"])

    async def save_learned(self, store: Store) -> None:
        """Save what the complexity policy learned (after corrections or confirmations)."""
        export = getattr(self.complexity, "export", None)
        if export is None or not self._learned_changed:
            return
        self._learned_changed = False
        await store.put_state("routing", "complexity", {"learned": export()})

    def forget(self, task_id: str) -> None:
        """Drop per-task correction state (the task ended)."""
        self._failures.pop(task_id, None)
        self._min_tier.pop(task_id, None)
        self._infos.pop(task_id, None)

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(self._decisions, dict(self._by_model), self._downgrades,
                                self._substitutions, self._upgrades)
