"""The orchestrator: runs many agent coroutines in one anyio task group (R7.1).

It resolves each task's profile and budget, starts its agent with a governed
context, waits for dependencies, and records how each task ended.  Parts that
need a background loop (allocator expiry, deadlock checks, health checks)
register a *service*; parts that hold per-task resources register a
*release hook* so a crashed, cancelled or aborted task always returns them.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import structlog

from policies.replan import BreakDown
from scheduler.allocator._allocator import Allocator
from scheduler.allocator._capacity import PoolCapacity
from scheduler.budget._profile import resolve_task
from scheduler.budget._tokens import TokenCounter
from scheduler.budget._tracker import Tracker
from scheduler.config._config import TaskSpec, VibeConfig
from scheduler.config._policies import load_policies
from scheduler.control._alerts import AlertRuntime
from scheduler.control._overdraft import OverdraftLedger
from scheduler.control._pause import PauseController
from scheduler.control._server import ControlServer
from scheduler.core._clock import SystemWallClock, WallClock
from scheduler.core._errors import (
    BudgetExceededError,
    ConfigError,
    FinishRequestedError,
    TaskAbortedError,
    VibeEngineError,
)
from scheduler.core._events import EventBus
from scheduler.core._provider import Provider, connect_rate_limits
from scheduler.core._usage import Totals
from scheduler.deadlock._graph import WaitForGraph
from scheduler.deadlock._locks import LockManager
from scheduler.deadlock._resolver import install_deadlock_handling
from scheduler.observe._observers import install_observers
from scheduler.routing._replan import Replanner
from scheduler.routing._router import Router, task_info
from scheduler.runtime._gateway import Gateway
from scheduler.store import Store, open_store
from scheduler.tasks._state import TaskHandle

_log = structlog.get_logger("vibe_engine.orchestrator")

AgentFactory = Callable[[], Any]
Service = Callable[[], Coroutine[Any, Any, None]]
ReleaseHook = Callable[[TaskHandle], Awaitable[None]]
ContextFactory = Callable[["Orchestrator", TaskHandle], Any]


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one task ended."""

    task_id: str
    agent: str
    status: str
    reason: str
    attempts: int
    task_type: str
    complexity: str
    model: str
    usage: Totals


@dataclass(frozen=True, slots=True)
class RunReport:
    """Outcomes of a run, plus per-model totals of the run's usage."""

    session_id: str
    outcomes: dict[str, TaskOutcome]
    by_model: dict[str, Totals] = field(default_factory=dict)

    @property
    def total(self) -> Totals:
        t = Totals()
        for o in self.outcomes.values():
            t.merge(o.usage)
        return t


def _default_context_factory(orch: Orchestrator, handle: TaskHandle) -> Any:
    from scheduler.runtime._context import (
        AgentContext,  # the one place scheduler reaches into agents
    )

    return AgentContext(
        task=handle,
        gateway=orch.gateway,
        store=orch.store,
        workspace=orch.workspace / handle.id,
        wait_for=orch.wait_for,
        locks=orch.locks,
    )


class Orchestrator:
    """Runs tasks under budgets; one instance per process."""

    def __init__(
        self,
        config: VibeConfig,
        *,
        provider: Provider,
        agents: Mapping[str, AgentFactory],
        store: Store | None = None,
        wall: WallClock | None = None,
        bus: EventBus | None = None,
        counter: TokenCounter | None = None,
        context_factory: ContextFactory = _default_context_factory,
    ) -> None:
        self.config = config
        self.policies = load_policies(config)  # R7.4: a bad policy name stops us here
        self.provider = provider
        self.agents = dict(agents)
        self.store = store if store is not None else open_store(
            config.store, config.state_dir, distributed=config.distributed
        )
        self.wall = wall or SystemWallClock()
        self.bus = bus or EventBus(anyio.current_time)
        self.session_id = config.session_id or (
            f"s-{self.wall.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        )
        self.workspace = config.state_dir / "workspace"
        self.tracker = Tracker(
            self.store, config, session_id=self.session_id, wall=self.wall,
            state_dir=config.state_dir,
        )
        self.counter = counter or TokenCounter()
        self.allocator = Allocator(config.allocator, events=self.bus,
                                   policy=self.policies.allocation)
        # pool capacities: learned provider limits, and slices of global pools (Redis)
        self.capacity = PoolCapacity(self.allocator, config)
        self.quota = self.capacity.global_quota(self.store)
        connect_rate_limits(provider, self.capacity.on_rate_limits)
        # R3: overdraft grace, pause and decide, alert actions
        self.overdraft = OverdraftLedger(self.tracker, self.store, config.overdraft, self.bus)
        self.controller = PauseController(
            self.store, self.tracker, self.bus, overdraft=self.overdraft,
            decision_timeout_s=config.alerts.decision_timeout_s,
        )
        self.alerts = AlertRuntime(self.tracker, self.bus, policy=self.policies.alerts,
                                   controller=self.controller)
        router = Router(config, bus=self.bus, complexity=self.policies.complexity,
                        policy=self.policies.routing)
        self.gateway = Gateway(
            config=config, tracker=self.tracker, counter=self.counter, provider=provider,
            bus=self.bus, allocator=self.allocator, controller=self.controller,
            alerts=self.alerts, router=router,
            replanner=Replanner(config, router, bus=self.bus, policy=self.policies.replan),
        )
        self.handles: dict[str, TaskHandle] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self.services: list[Service] = [self.allocator.run]
        self.release_hooks: list[ReleaseHook] = []
        self._context_factory = context_factory
        self.waits = WaitForGraph()  # R5.6: who waits for whom
        self.locks = LockManager(self.waits)
        self.deadlocks = install_deadlock_handling(self)
        self._opened = False
        self.services.append(self._serve_control)
        self.services.append(self.gateway.health.run)  # R6.4: 60 s health checks
        self.waits.on_blocking = self._blocking_changed  # R5.2: boost tasks others wait on
        self.gateway.on_pause.append(self._release_leases)  # R3.4: paused holds no lease
        self.release_hooks.append(self._release_leases)  # crashed / aborted attempts
        self.observers = install_observers(self)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if not self._opened:
            await self.store.open()
            await self.tracker.open()
            await self.controller.open()
            self._opened = True

    async def _release_leases(self, handle: TaskHandle) -> None:
        self.allocator.release_holder(handle.id)

    def _blocking_changed(self, task_id: str, blocking: bool) -> None:
        handle = self.handles.get(task_id)
        if handle is not None and handle.status == "running":
            self.allocator.set_blocking(task_id, blocking)

    async def _serve_control(self) -> None:
        """R3.4: take decisions from ``vibe-engine decide`` in another terminal."""
        try:
            await ControlServer(self.controller, self.config.state_dir).serve()
        except (OSError, VibeEngineError) as exc:
            # decisions still arrive through the store (the controller polls it)
            _log.warning("control_unavailable", error=str(exc))

    async def decide(self, task_id: str, action: str, **amounts: Any) -> dict[str, Any]:
        """Decide about a paused task from Python (R3.4): add_budget, finish or review."""
        return await self.controller.decide(task_id, action, **amounts)

    async def aclose(self) -> None:
        if self._opened:
            self._opened = False
            await self.provider.aclose()
            await self.store.aclose()

    async def run(self, specs: Sequence[TaskSpec] | None = None) -> RunReport:
        """Run ``specs`` (default: the config's tasks) to completion and report."""
        specs = list(self.config.tasks if specs is None else specs)
        async with AsyncExitStack() as stack:
            await self.open()
            stack.push_async_callback(self.aclose)
            self.add_tasks(specs)
            async with anyio.create_task_group() as tg:
                if self.quota is not None:  # the first slices before any task leases
                    await tg.start(self.quota.run)
                for service in self.services:
                    tg.start_soon(service)
                async with anyio.create_task_group() as tasks_tg:
                    self._task_group = tasks_tg
                    for handle in list(self.handles.values()):
                        if handle.status == "pending":
                            tasks_tg.start_soon(self._run_task, handle)
                self._task_group = None
                tg.cancel_scope.cancel()
            return await self._report()

    def add_tasks(self, specs: Sequence[TaskSpec]) -> list[TaskHandle]:
        out = []
        for spec in specs:
            if spec.id in self.handles:
                raise ConfigError("tasks", spec.id, "duplicate task id")
            if spec.agent not in self.agents:
                raise ConfigError(
                    f"tasks.{spec.id}.agent", spec.agent,
                    f"unknown agent; available: {', '.join(sorted(self.agents))}",
                )
            handle = TaskHandle(spec, resolve_task(spec, self.config))
            self.handles[spec.id] = handle
            self.allocator.register(spec.id, spec.priority)
            out.append(handle)
        return out

    # -- one task ----------------------------------------------------------------------

    async def wait_for(self, waiter: str, target: str) -> Any:
        """Wait until ``target`` ends; its result, or TaskAbortedError if it did not complete."""
        handle = self.handles.get(target)
        if handle is None:
            raise TaskAbortedError(waiter, f"waits for unknown task {target!r}")
        with self.waits.waiting(waiter, target):
            await handle.done.wait()
        if handle.status != "completed":
            raise TaskAbortedError(waiter, f"dependency {target} {handle.status}: {handle.reason}")
        return handle.result

    def abort(self, task_id: str, reason: str, *, requeue: bool = True) -> bool:
        """Cancel a running task's attempt; requeue it (keeping its attempt count) or fail it."""
        handle = self.handles.get(task_id)
        if handle is None or handle.cancel_scope is None:
            return False
        handle.flags["abort"] = (reason, requeue)
        handle.cancel_scope.cancel()
        return True

    async def _run_task(self, handle: TaskHandle) -> None:
        spec = handle.spec
        try:
            await self._wait_dependencies(handle)
            await self.tracker.start_task(spec.id, handle.profile, agent=spec.agent)
            await self.controller.restore_task(spec.id)
            await self._attempts(handle)
        except VibeEngineError as exc:
            handle.status, handle.reason = "failed", str(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(handle)

    async def _wait_dependencies(self, handle: TaskHandle) -> None:
        """Wait for ``depends_on``; a deadlock victim here fails (a cycle would recur)."""
        with anyio.CancelScope() as scope:
            handle.cancel_scope = scope
            for dep in handle.spec.depends_on:
                await self.wait_for(handle.id, dep)
        handle.cancel_scope = None
        abort = handle.flags.pop("abort", None)
        if scope.cancelled_caught and abort is not None:
            raise TaskAbortedError(handle.id, f"{abort[0]} while waiting for its dependencies")

    async def _attempts(self, handle: TaskHandle) -> None:
        factory = self.agents[handle.spec.agent]
        while True:
            handle.status = "running"
            handle.started_at = anyio.current_time()
            handle.flags.pop("abort", None)
            with anyio.CancelScope() as scope:
                handle.cancel_scope = scope
                await self._attempt(handle, factory)
            handle.cancel_scope = None
            with anyio.CancelScope(shield=True):
                for hook in self.release_hooks:
                    await hook(handle)
            abort = handle.flags.pop("abort", None)
            retry = handle.flags.pop("retry", None)
            if retry is not None and abort is None:
                handle.attempt += 1
                handle.status, handle.reason = "requeued", ""
                self.bus.emit("task_retried", f"task {handle.id} retried: {retry}",
                              task_id=handle.id, attempt=handle.attempt, level="warning")
                continue
            if not scope.cancelled_caught or abort is None:
                return
            reason, requeue = abort
            if not requeue or handle.attempt > self.config.deadlock.max_requeues:
                handle.status = "failed"
                handle.reason = f"{reason} (attempt {handle.attempt}; no requeue left)"
                return
            handle.attempt += 1
            handle.status = "requeued"
            self.bus.emit("task_requeued", f"task {handle.id} requeued: {reason}",
                          task_id=handle.id, attempt=handle.attempt)

    async def _attempt(self, handle: TaskHandle, factory: AgentFactory) -> None:
        try:
            agent = factory()
            split = await self.gateway.replanner.before_call(  # R6.2/R6.7
                handle, lambda: self.tracker.fraction_used(handle.id), agent=agent,
                allow_break_down="split_from" not in handle.flags,  # parts are not split again
            )
            if split is not None:
                handle.result = await self._run_parts(handle, split, agent)
            else:
                ctx = self._context_factory(self, handle)
                handle.result = await agent.run(ctx)
            handle.status = "completed"
        except FinishRequestedError as exc:
            handle.status, handle.reason = "finished", f"saved and finished ({exc.source})"
        except BudgetExceededError as exc:
            handle.status, handle.reason = "failed", str(exc)
        except VibeEngineError as exc:  # the runtime's own stops are not the model's fault
            handle.status, handle.reason = "failed", str(exc)
        except Exception as exc:
            _log.exception("agent_crashed", task_id=handle.id, agent=handle.spec.agent)
            handle.status, handle.reason = "failed", f"agent crashed: {type(exc).__name__}: {exc}"
            self._report_failure(handle)

    def _report_failure(self, handle: TaskHandle) -> None:
        """R4.3: a task that failed after its model finished is a signal of a wrong choice.

        With ``routing.retry_failed_attempts`` the attempt is retried while the failures are
        on the cheapest tier, and once more after the router upgrades the task: haiku
        failing twice moves the task (and similar later ones) to the next tier.
        """
        if not (handle.model and handle.calls):
            return
        router = self.gateway.router
        upgrade = router.report_outcome(task_info(handle), handle.model, success=False)
        params = self.config.routing
        if params.retry_failed_attempts and handle.attempt < params.max_attempts and (
            upgrade is not None or handle.model == router.catalog.cheapest
        ):
            handle.flags["retry"] = (f"failed on {handle.model}: {handle.reason}"
                                     + (f"; next attempt on {upgrade.to_model}" if upgrade else ""))

    async def _run_parts(self, handle: TaskHandle, split: BreakDown, agent: object) -> Any:
        """R6.2: run the smaller tasks (and the verification step) in place of ``handle``."""
        specs = [s for s in self.gateway.replanner.break_down(handle.spec, split, agent)
                 if s.id not in self.handles]
        tg = self._task_group
        if tg is None:
            raise VibeEngineError(f"task {handle.id} was broken down outside Orchestrator.run")
        for part in self.add_tasks(specs):
            part.flags["split_from"] = handle.id
            tg.start_soon(self._run_task, part)
        handle.status = "broken_down"
        ids = [s.id for s in specs] or [
            t for t in self.handles if t.startswith(f"{handle.id}.")  # a requeued attempt
        ]
        if split.add_verification and ids:
            return await self.wait_for(handle.id, ids[-1])  # it depends on every part
        return [await self.wait_for(handle.id, t) for t in ids]

    async def _finish(self, handle: TaskHandle) -> None:
        handle.finished_at = anyio.current_time()
        self.allocator.unregister(handle.id)  # its leases and waits go back to the pool
        self.gateway.router.forget(handle.id)
        if not handle.finished:
            handle.status = "failed"
            handle.reason = handle.reason or "cancelled"
        if handle.spec.id in self.tracker.tasks():
            self.tracker.finish_task(handle.id, handle.status)
        if handle.status in ("completed", "finished"):
            await self.controller.discard(handle.id)  # a pause that never took effect
        await self.store.put_state("task", handle.id, self._task_record(handle))
        self.bus.emit(
            f"task_{handle.status}",
            handle.reason or f"task {handle.id} {handle.status}",
            task_id=handle.id, agent=handle.spec.agent,
            level="info" if handle.status == "completed" else "warning",
        )
        handle.done.set()

    def _task_record(self, handle: TaskHandle) -> dict[str, Any]:
        return {
            "task_id": handle.id,
            "session_id": self.session_id,
            "agent": handle.spec.agent,
            "status": handle.status,
            "reason": handle.reason,
            "attempts": handle.attempt,
            "priority": handle.spec.priority,
            "task_type": handle.profile.task_type,
            "complexity": handle.profile.complexity,
            "model": handle.model,
            "calls": handle.calls,
        }

    async def _report(self) -> RunReport:
        outcomes: dict[str, TaskOutcome] = {}
        by_model: dict[str, Totals] = {}
        for handle in self.handles.values():
            usage = await self.store.totals(f"task:{handle.id}")
            outcomes[handle.id] = TaskOutcome(
                handle.id, handle.spec.agent, handle.status, handle.reason, handle.attempt,
                handle.profile.task_type, handle.profile.complexity, handle.model, usage,
            )
            for event in await self.store.events(task_id=handle.id):
                if event.model and event.session_id == self.session_id:
                    by_model.setdefault(event.model, Totals()).add(event)
        return RunReport(self.session_id, outcomes, by_model)
