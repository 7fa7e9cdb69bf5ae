"""The composition root: builds a run's parts and connects them, in one place.

Each part gets only the collaborators it uses (never the orchestrator), and every
connection between parts is made here, through the parts' ``on_<event>`` hooks:

* provider ``on_rate_limits`` → pool capacities (learned limits, R5.3);
* gateway ``on_pause`` and the run's ``on_release`` → give back the task's leases
  (R3.4: a paused task holds none; a crashed or aborted attempt returns them) and,
  on release, its locks; on pause, the task's ``usage.json`` is brought up to date;
* wait-for graph ``on_blocking`` → the allocator's boost of tasks others wait on (R5.2);
* deadlock detector → resolver → the task table's abort and the lease release (R5.7);
* gateway ``on_settle`` → observers (status, metrics, trace spans);
* the run's ``on_forget`` (an ended task the run forgets: serve's idle grouped tasks) →
  the tracker, allocator, pause controller, alerts, router and metrics drop it;
* gateway ``instrument`` → lease-wait metrics, and call/lease spans when tracing is on;
* event bus → webhooks (the ``notify`` alert action and paused tasks, R3.3/R3.4);
* allocator statistics → the long-wait reporter (``lease_wait_long``, R5.5).

Each of these connections has a test from ``Orchestrator.run`` that fails without it
(``tests/test_runtime_wiring.py``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from scheduler.allocator import Allocator, GlobalQuota, PoolCapacity
from scheduler.budget import TokenCounter, Tracker
from scheduler.config import LoadedPolicies, VibeConfig, load_policies
from scheduler.control import (
    AlertRuntime,
    ControlServer,
    OverdraftLedger,
    PauseController,
    Webhooks,
)
from scheduler.core import (
    AsyncHook,
    EventBus,
    Hook,
    Provider,
    ReportsRateLimits,
    SystemWallClock,
    VibeEngineError,
    WallClock,
    get_logger,
    loop_time,
)
from scheduler.deadlock import DeadlockDetector, DeadlockResolver, LockManager, WaitForGraph
from scheduler.deadlock._resolver import describer
from scheduler.observe import Observers, RunView, TracedProvider, build_tracing
from scheduler.observe._metrics import MeteredProvider
from scheduler.observe._observers import build_observers
from scheduler.routing import Replanner, Router
from scheduler.runtime._gateway import Gateway
from scheduler.runtime._quality import make_quality_scorer
from scheduler.runtime._recovery import announce_replaced, open_call_recovery
from scheduler.runtime._waits import long_wait_reporter
from scheduler.store import Store, open_store
from scheduler.tasks import TaskHandle, TaskTable

_log = get_logger("vibe_engine.orchestrator")

Service = Callable[[], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class Parts:
    """Every part of one run, built and connected by :func:`build_parts`."""

    config: VibeConfig
    policies: LoadedPolicies
    session_id: str
    store: Store
    wall: WallClock
    bus: EventBus
    counter: TokenCounter
    tracker: Tracker
    allocator: Allocator
    capacity: PoolCapacity
    quota: GlobalQuota | None
    overdraft: OverdraftLedger
    controller: PauseController
    alerts: AlertRuntime
    gateway: Gateway
    waits: WaitForGraph
    locks: LockManager
    deadlocks: DeadlockDetector
    tasks: TaskTable
    view: RunView
    observers: Observers
    #: Awaited after every attempt, however it ended: the task's leases and locks go back.
    on_release: AsyncHook[[TaskHandle]] = field(default_factory=AsyncHook)
    #: Called with the id of an ended task the run forgets: each part drops its state.
    on_forget: Hook[[str]] = field(default_factory=Hook)
    #: Background loops run beside the tasks for the whole run.
    services: list[Service] = field(default_factory=list)
    #: Posts notifications to ``alerts.webhooks`` (``None`` when none is configured).
    webhooks: Webhooks | None = None


def _session_id(config: VibeConfig, wall: WallClock) -> str:
    return config.session_id or f"s-{wall.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _control_service(controller: PauseController, config: VibeConfig) -> Service:
    async def serve_control() -> None:
        """R3.4: take decisions from ``vibe-engine decide`` in another terminal."""
        try:
            await ControlServer(controller, config.state_dir).serve()
        except (OSError, VibeEngineError) as exc:
            # decisions still arrive through the store (the controller polls it)
            _log.warning("control_unavailable", error=str(exc))

    return serve_control


def _build_gateway(config: VibeConfig, policies: LoadedPolicies, provider: Provider,
                   tracker: Tracker, counter: TokenCounter, bus: EventBus,
                   allocator: Allocator, controller: PauseController,
                   alerts: AlertRuntime) -> Gateway:
    router = Router(config, bus=bus, complexity=policies.complexity, policy=policies.routing)
    gateway = Gateway(
        config=config, tracker=tracker, counter=counter, provider=provider, bus=bus,
        allocator=allocator, router=router, controller=controller, alerts=alerts,
        replanner=Replanner(config, router, bus=bus, policy=policies.replan),
    )
    if router.health.ping is None:
        router.health.ping = gateway.ping  # R6.4: health checks go through the provider
    scorer = make_quality_scorer(config, gateway)  # R4.3: the judge calls through the gateway
    if scorer is not None:
        gateway.scorer = scorer
    return gateway


def _build_deadlocks(config: VibeConfig, policies: LoadedPolicies, waits: WaitForGraph,
                     locks: LockManager, tasks: TaskTable, tracker: Tracker,
                     allocator: Allocator, bus: EventBus) -> DeadlockDetector:
    """R5.6/R5.7: the detector finds cycles, the resolver makes the victim yield."""

    def blocking_changed(task_id: str, blocking: bool) -> None:
        handle = tasks.get(task_id)
        # a task not started yet counts too (``depends_on`` waits begin at once); an ended
        # one is no longer registered with the allocator
        if handle is not None and not handle.finished:
            allocator.set_blocking(task_id, blocking)  # R5.2: boost tasks others wait on

    async def release_leases(task_id: str) -> None:
        allocator.release_holder(task_id)

    waits.on_blocking.connect(blocking_changed)
    resolver = DeadlockResolver(
        locks=locks, abort=lambda v, r, q: tasks.abort(v, r, requeue=q), bus=bus,
        release_leases=release_leases, config=config.deadlock,
    )
    return DeadlockDetector(waits, resolve=resolver, describe=describer(tasks, tracker),
                            config=config.deadlock, policy=policies.victim)  # R5.7


def _connect(parts: Parts, provider: Provider) -> None:
    allocator, locks = parts.allocator, parts.locks

    async def release_leases(handle: TaskHandle) -> None:
        allocator.release_holder(handle.id)

    async def release_locks(handle: TaskHandle) -> None:
        locks.release_all(handle.id)

    if isinstance(provider, ReportsRateLimits):
        provider.on_rate_limits.connect(parts.capacity.on_rate_limits)
    async def write_usage(handle: TaskHandle) -> None:
        parts.tracker.write_usage(handle.id)  # what offline status and decide read (R2.6)

    parts.gateway.on_pause.connect(release_leases)  # R3.4: a paused task holds no lease
    parts.tracker.on_estimate_replaced = partial(announce_replaced, parts.bus)  # R1.5
    parts.gateway.on_pause.connect(write_usage)
    parts.on_release.connect(release_leases)  # crashed, cancelled or aborted attempts
    parts.on_release.connect(release_locks)
    # a forgotten task (an idle serve group): every part drops what it held of it
    for forget in (parts.tracker.forget_task, allocator.unregister, parts.controller.forget,
                   parts.alerts.forget, parts.gateway.router.forget):
        parts.on_forget.connect(forget)
    metrics = parts.observers.metrics
    if metrics is not None:
        parts.on_forget.connect(metrics.forget_task)
        parts.gateway.provider = MeteredProvider(provider, metrics.on_failure,
                                                 metrics.on_duration)
        parts.gateway.instrument(lease=metrics.wrap_lease)
    _connect_tracing(parts)
    if parts.config.alerts.webhooks:
        parts.webhooks = Webhooks.from_config(parts.config.alerts, session_id=parts.session_id,
                                              state_dir=parts.config.state_dir)
        parts.bus.subscribe(parts.webhooks.on_event)
        parts.services.append(parts.webhooks.run)
    parts.services.extend([
        allocator.run, parts.gateway.admission.keep_leases,  # R5.4: calls keep leases
        parts.gateway.admission.keep_holds,  # and their shared budget holds (Redis)
        parts.tracker.flush_usage,  # R2.6: running tasks' usage.json, one interval behind
        # R1.5: calls a process killed since left open (a replica on a shared store)
        open_call_recovery(parts.tracker, parts.bus),
        _control_service(parts.controller, parts.config),
        parts.gateway.health.run,  # R6.4: 60 s health checks
        parts.deadlocks.run,  # R5.6: the 10 s wait-for graph check
        long_wait_reporter(allocator, parts.bus),  # R5.5: long lease waits are logged
        *parts.observers.services(),
    ])


def _connect_tracing(parts: Parts) -> None:
    """OpenTelemetry spans (``tracing.enabled`` or ``OTEL_TRACES_EXPORTER``): nothing is
    wired when off, so untraced runs do no per-call work for it."""
    tracing = build_tracing(parts.view)
    if tracing is None:
        return
    parts.gateway.instrument(attempt=tracing.wrap_attempt, lease=tracing.wrap_lease)
    parts.gateway.provider = TracedProvider(parts.gateway.provider, tracing)
    parts.on_release.connect(tracing.end_task)
    parts.services.append(tracing.run)


def build_parts(
    config: VibeConfig,
    *,
    provider: Provider,
    store: Store | None = None,
    wall: WallClock | None = None,
    bus: EventBus | None = None,
    counter: TokenCounter | None = None,
) -> Parts:
    """Build every part of a run from ``config`` and connect them (module docstring).

    Policies load first: a bad policy name stops the run before anything is written.
    """
    policies = load_policies(config)
    store = store if store is not None else open_store(
        config.store, config.state_dir, distributed=config.distributed)
    wall = wall or SystemWallClock()
    bus = bus or EventBus(loop_time)  # anyio's reading, without its lookup per event
    counter = counter or TokenCounter()
    session_id = _session_id(config, wall)
    tracker = Tracker(store, config, session_id=session_id, wall=wall,
                      state_dir=config.state_dir)
    allocator = Allocator(config.allocator, events=bus, policy=policies.allocation)
    capacity = PoolCapacity(allocator, config)  # learned limits and global slices (Redis)
    overdraft = OverdraftLedger(tracker, store, config.overdraft, bus)  # R3.5
    controller = PauseController(store, tracker, bus, overdraft=overdraft,
                                 decision_timeout_s=config.alerts.decision_timeout_s)
    alerts = AlertRuntime(tracker, bus, policy=policies.alerts, controller=controller)
    gateway = _build_gateway(config, policies, provider, tracker, counter, bus, allocator,
                             controller, alerts)
    waits, tasks = WaitForGraph(), TaskTable()
    locks = LockManager(waits)
    view = RunView(config=config, session_id=session_id, wall=wall, bus=bus, store=store,
                   tracker=tracker, tasks=tasks, allocator=allocator, health=gateway.health,
                   controller=controller, on_settle=gateway.on_settle,
                   on_capacity=capacity.on_change)
    parts = Parts(
        config=config, policies=policies, session_id=session_id, store=store, wall=wall,
        bus=bus, counter=counter,
        tracker=tracker, allocator=allocator, capacity=capacity,
        quota=capacity.global_quota(store), overdraft=overdraft, controller=controller,
        alerts=alerts, gateway=gateway, waits=waits, locks=locks,
        deadlocks=_build_deadlocks(config, policies, waits, locks, tasks, tracker, allocator,
                                   bus),
        tasks=tasks, view=view, observers=build_observers(view),
    )
    _connect(parts, provider)
    return parts
