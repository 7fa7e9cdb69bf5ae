"""The orchestrator: runs many agent coroutines in one anyio task group (R7.1).

It resolves each task's profile and budget, starts its agent with a governed
context, waits for dependencies, and records how each task ended and what its
agent returned.  Each run is a *session* (:mod:`scheduler.runtime._session`): a
new session id starts fresh, an existing one is continued (``vibe-engine
resume``); one orchestrator at a time may use a state directory.  The parts it
drives are built and connected by the composition root
(:mod:`scheduler.runtime._build`); their background loops run as *services*
beside the tasks, and the run's ``on_release`` hook returns a crashed,
cancelled or aborted attempt's leases and locks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from typing import Any

import anyio

from policies.replan import BreakDown
from scheduler.budget import TokenCounter, resolve_task
from scheduler.config import TaskSpec, VibeConfig
from scheduler.core import (
    ConfigError,
    EventBus,
    Hook,
    LocalFileError,
    Provider,
    TaskAbortedError,
    VibeEngineError,
    WallClock,
    get_logger,
)
from scheduler.runtime._build import Service, build_parts
from scheduler.runtime._call import BreakDownRequested
from scheduler.runtime._context import AgentContext
from scheduler.runtime._deadline import Deadlines
from scheduler.runtime._ending import Endings
from scheduler.runtime._recovery import announce_charged, leave
from scheduler.runtime._report import RunReport, build_report, forgotten_outcomes, stored_result
from scheduler.runtime._retry import attempt_failed, next_attempt
from scheduler.runtime._session import SessionLog, StateDirLock, encode_result, restore
from scheduler.runtime._spawn import Spawner, is_cancellation, shield, task_group
from scheduler.runtime._stragglers import Stragglers
from scheduler.store import Store
from scheduler.tasks import TaskHandle, TaskStatus, TaskTable

_log = get_logger("vibe_engine.orchestrator")

AgentFactory = Callable[[], Any]
ContextFactory = Callable[["Orchestrator", TaskHandle], Any]


def _default_context_factory(orch: Orchestrator, handle: TaskHandle) -> AgentContext:
    return AgentContext(
        task=handle, gateway=orch.gateway, store=orch.store, wait_for=orch.wait_for,
        locks=orch.locks,  # the workspace path made on first use (most agents never ask)
    )


def _running(handle: TaskHandle, scope: anyio.CancelScope) -> None:
    """An attempt of ``handle`` begins, cancelled through ``scope``."""
    handle.status = TaskStatus.RUNNING
    handle.started_at = anyio.current_time()
    handle.abort = None
    handle.cancel_scope = scope


class Orchestrator:
    """Runs tasks under budgets; one instance per process.

    The parts are built and connected by :func:`~scheduler.runtime._build.build_parts`;
    the orchestrator runs the tasks and the parts' services in one task group.
    """

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
        parts = build_parts(config, provider=provider, store=store, wall=wall, bus=bus,
                            counter=counter)
        self.parts = parts
        self.config = config
        self.policies = parts.policies
        self.provider = provider
        self.agents = dict(agents)
        self.store, self.wall, self.bus, self.counter = (
            parts.store, parts.wall, parts.bus, parts.counter)
        self.session_id = parts.session_id
        self.workspace = config.state_dir / "workspace"  # AgentContext.workspace's parent
        self.tracker, self.allocator, self.capacity, self.quota = (
            parts.tracker, parts.allocator, parts.capacity, parts.quota)
        self.overdraft, self.controller, self.alerts, self.gateway = (
            parts.overdraft, parts.controller, parts.alerts, parts.gateway)
        self.waits, self.locks, self.deadlocks = parts.waits, parts.locks, parts.deadlocks
        self.handles: TaskTable = parts.tasks
        self.view, self.observers = parts.view, parts.observers
        self.services: list[Service] = parts.services
        self._task_group: Spawner | None = None
        #: Tasks added by :meth:`spawn` whose budget a parent task encloses.
        self._parents: dict[str, str] = {}
        self._context_factory = context_factory
        self._opened = False
        self._lock = StateDirLock(config.state_dir)
        self._session = SessionLog(self.store, config, session_id=self.session_id,
                                   wall=self.wall)
        self._prior: dict[str, dict[str, Any]] = {}  # task records of a continued session
        #: Tasks run again though a continued session ended them (serve's keys: services).
        self.rerun: set[str] = set()
        #: Attempts the runtime ended whose agent has not returned (R5.7: their leases and
        #: locks back at once; given up on after ``stragglers.grace_s``).
        self.stragglers = Stragglers(release=self._take_back, end=self._end,
                                     group=self._spawner, finish=self.gateway.admission.on_finish)
        self.handles.on_abort = self.stragglers.cancelled
        self._deadlines = Deadlines(  # R1.1: every attempt's wall-time budget
            tracker=self.tracker, controller=self.controller, bus=self.bus,
            on_expired=lambda t: self.stragglers.cancelled(self.handles[t],
                                                           "wall-time budget spent"))
        self._endings = Endings(self._finish)
        #: Called once a task's end is recorded (its ``done`` is set): ``serve`` forgets
        #: its grouped tasks then (:meth:`forget`).
        self.on_ended: Hook[[TaskHandle]] = Hook()
        #: Ended tasks the run forgot: the report reads theirs from the store.
        self.forgotten = 0

    def add_service(self, service: Service) -> None:
        """Run ``service`` beside the tasks for the whole run (the live view, a drill)."""
        self.services.append(service)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Lock the state directory (:class:`SessionError` when another orchestrator runs
        on it), open the store and load what the session and day already used."""
        if not self._opened:
            self._lock.acquire_nowait()
            try:
                await self._open_parts()
            except BaseException:
                self._lock.release(undo=True)
                raise
            self._opened = True

    async def _open_parts(self) -> None:
        await self.store.open()
        announce_charged(self.bus, await self.tracker.open())  # calls a killed run left open
        await self.controller.open()
        await self.gateway.router.load_learned(self.store)  # R4.3 across restarts

    async def decide(self, task_id: str, action: str, **amounts: Any) -> dict[str, Any]:
        """Decide about a paused task from Python (R3.4): add_budget, finish or review."""
        return await self.controller.decide(task_id, action, **amounts)

    async def aclose(self) -> None:
        if self._opened:
            self._opened = False
            try:
                self.tracker.write_usage()  # usage.json is current when the run ends
                await self.provider.aclose()
                await leave(self.tracker)
                await self.store.aclose()
            finally:
                self._lock.release()

    async def run(self, specs: Sequence[TaskSpec] | None = None) -> RunReport:
        """Run ``specs`` (default: the config's tasks) to completion and report.

        A session id the store knows is continued: its ended tasks keep their status
        and result and are not run again."""
        specs = list(self.config.tasks if specs is None else specs)
        async with AsyncExitStack() as stack:
            await self.open()
            stack.push_async_callback(self.aclose)
            self.add_tasks(specs)
            self._prior = await self._session.begin(list(self.handles))
            interrupted = True
            try:
                await self._run_all()
                interrupted = False
            finally:
                with anyio.CancelScope(shield=True):
                    await self._session.end(interrupted=interrupted)
            return await self._report()

    def _log_ended(self) -> None:
        """One line for the run's tasks (a completed task's own is at debug level), while
        the services (the live view, which holds the log lines) still run."""
        counts = Counter(str(h.status) for h in self.handles.values())
        _log.info("run_ended", session_id=self.session_id, tasks=len(self.handles),
                  by_status=dict(sorted(counts.items())))

    async def _run_all(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.quota is not None:  # the first slices before any task leases
                await tg.start(self.quota.run)
            for service in self.services:
                tg.start_soon(service)
            async with task_group(  # lean agent tasks on asyncio
                    self.stragglers.grace_s,
                    lambda scope: self.stragglers.straggler(scope, self.handles.values()),
            ) as tasks_tg:
                self._task_group = tasks_tg
                await self._start(self.handles.values(), tasks_tg)
            self._task_group = None
            self._log_ended()
            tg.cancel_scope.cancel()

    async def _start(self, handles: Iterable[TaskHandle], tg: Spawner) -> None:
        """Run the pending ``handles``, except those a continued session ended (they keep
        what it recorded); every task is recorded before any starts, so offline status
        lists them all and the tasks start together."""
        to_run = []
        for handle in [h for h in handles if h.status is TaskStatus.PENDING]:
            prior = self._prior.get(handle.id)
            if prior is not None and handle.id not in self.rerun and restore(handle, prior):
                self.allocator.unregister(handle.id)
                handle.set_done()
            else:
                to_run.append(handle)
        await self._session.save_tasks(to_run)
        for handle in to_run:
            tg.start_scoped(self._run_task, handle)

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

    async def spawn(self, spec: TaskSpec) -> TaskHandle:
        """Add a task to the running session and start it (a ``serve`` client's grouped
        task).  An id ``PARENT/NAME`` puts it inside task ``PARENT``: the parent's budget
        encloses its budget and the stores charge its use to both (R1.2).  A task whose
        start failed before its budget was counted (the store was unreachable) starts
        again under its id."""
        if self._task_group is None:
            raise VibeEngineError(f"cannot start task {spec.id!r}: the run is not running")
        parent = spec.id.rpartition("/")[0]
        if parent and parent not in self.handles:
            raise VibeEngineError(f"task {spec.id!r}: unknown parent task {parent!r}")
        earlier = self.handles.get(spec.id)
        if earlier is not None and earlier.done.is_set() and not self._tracked(spec.id):
            del self.handles[spec.id]  # nothing was charged to it: nothing to keep
        (handle,) = self.add_tasks([spec])
        if parent:
            self._parents[spec.id] = parent
        await self._session.save_task(handle)
        self._task_group.start_scoped(self._run_task, handle)
        return handle

    # -- one task ----------------------------------------------------------------------

    async def wait_for(self, waiter: str, target: str) -> Any:
        """Wait until ``target`` ends; its result, or TaskAbortedError if it did not complete."""
        handle = self.handles.get(target)
        if handle is None:
            raise TaskAbortedError(waiter, f"waits for unknown task {target!r}")
        with self.waits.waiting(waiter, target):
            await handle.done.wait()
        if handle.status is not TaskStatus.COMPLETED:
            raise TaskAbortedError(waiter, f"dependency {target} {handle.status}: {handle.reason}")
        return handle.result

    def abort(self, task_id: str, reason: str, *, requeue: bool = True) -> bool:
        """Cancel a running task's attempt; requeue it (keeping its attempt count) or fail it."""
        return self.handles.abort(task_id, reason, requeue=requeue)

    async def _run_task(self, scope: anyio.CancelScope, handle: TaskHandle,
                        begun: bool = False) -> None:
        """Run the task's attempts until one ends it; its end is recorded whatever happens.
        Each attempt -- the agent's run under the task's time budget or, when replanning
        breaks the task down before or during it (R6.2), its parts in its place -- runs in
        this frame: thousands of agents wait inside one, and every resumption of a waiting
        call passes through each frame above it.

        ``scope`` is the task's one cancel scope, entered here (the run cancels the task
        through it, an abort or the time budget end the attempt through it): a cancelled
        scope stays cancelled, so an aborted attempt that goes back in the queue runs again
        in a task of its own (``begun``: its dependencies and budget were seen to)."""
        with scope:  # entered here: no wrapping coroutine per waiting agent
            elsewhere = False  # its end is recorded by its next attempt's task, or was
            try:
                if not begun:
                    await self._begin(handle)
                factory = self.agents[handle.spec.agent]
                again = True
                while again:
                    _running(handle, scope)
                    try:
                        try:  # the attempt (parts are not split again)
                            agent = factory()
                            split = await self._replan(handle, agent, not handle.split_from)
                            if split is None:
                                ctx = self._context_factory(self, handle)
                                try:
                                    with self._deadline(handle):
                                        handle.result = await agent.run(ctx)
                                except BreakDownRequested as exc:  # its model degraded
                                    split = await self._replan(handle, agent, True) or exc.decision
                            if split is not None:
                                handle.result = await self._run_parts(handle, split, agent)
                            # kept with the task, or the task fails
                            handle.stored_result = encode_result(handle.id, handle.result)
                            handle.status = TaskStatus.COMPLETED
                        except (Exception, SystemExit) as exc:
                            attempt_failed(handle, exc, self.gateway.router, self.config.routing)
                        cancelled = False
                    except (anyio.get_cancelled_exc_class(), BaseExceptionGroup) as exc:
                        if handle.abort is None or not is_cancellation(exc):
                            raise  # the run itself is cancelled
                        cancelled = True  # aborted (R5.7): only shielded awaits from here on
                    finally:
                        handle.cancel_scope = None
                    if elsewhere := self.stragglers.ended(handle):  # given up on: recorded
                        return
                    with shield():
                        await self.parts.on_release(handle)
                    again = next_attempt(handle, cancelled, self.bus, self.config.deadlock)
                    if again and scope.cancel_called:
                        self._spawner().start_scoped(self._run_task, handle, True)
                        elsewhere = True  # the new task ends it
                        return
            except VibeEngineError as exc:
                handle.status, handle.reason = TaskStatus.FAILED, str(exc)
            finally:
                if not (elsewhere or self.stragglers.ended(handle)):
                    await self._end(handle)

    def _take_back(self, handle: TaskHandle) -> None:
        self.allocator.release_holder(handle.id)
        self.locks.release_all(handle.id)

    def _spawner(self) -> Spawner:
        tg = self._task_group
        if tg is None:
            raise VibeEngineError("tasks run only inside Orchestrator.run")
        return tg

    async def _begin(self, handle: TaskHandle) -> None:
        """Wait for the task's dependencies, then start counting its budget."""
        spec = handle.spec
        await self._wait_dependencies(handle)
        await self.tracker.start_task(spec.id, handle.profile, agent=spec.agent,
                                      span=spec.budget_span, parent=self._parents.get(spec.id))
        if self._session.continued or spec.id in self._parents:
            # a continued session, or a task spawned again after the run forgot it, has
            # the budget people added to it to restore
            await self.controller.restore_task(spec.id)
        elif spec.budget_span == "store":  # budget added for every process before
            await self.controller.fleet.sync(spec.id)

    async def _wait_dependencies(self, handle: TaskHandle) -> None:
        """Wait for ``depends_on``; a deadlock victim here fails (a cycle would recur)."""
        if not handle.spec.depends_on:
            return  # nothing to wait for, nothing to abort: no cancel scope to make
        with anyio.CancelScope() as scope:
            handle.cancel_scope = scope
            for dep in handle.spec.depends_on:
                await self.wait_for(handle.id, dep)
        handle.cancel_scope = None
        abort, handle.abort = handle.abort, None
        if scope.cancelled_caught and abort is not None:
            raise TaskAbortedError(handle.id, f"{abort.reason} while waiting for its dependencies")

    def _replan(self, handle: TaskHandle, agent: Any,
                allow_break_down: bool) -> Awaitable[BreakDown | None]:
        """R6.2/R6.7: whether to break the task down, simplify it or wait for its model."""
        return self.gateway.replanner.before_call(
            handle, lambda: self.tracker.fraction_used(handle.id), agent=agent,
            allow_break_down=allow_break_down)

    def _deadline(self, handle: TaskHandle) -> AbstractContextManager[None]:
        """R1.1: the task's wall-time budget ends the attempt even without a model call."""
        tg, scope = self._task_group, handle.cancel_scope
        if tg is None or scope is None:
            return nullcontext()
        return self._deadlines.watch(handle.id, scope, tg.start_soon)

    async def _run_parts(self, handle: TaskHandle, split: BreakDown, agent: object) -> Any:
        """R6.2: run the smaller tasks (and the verification step) in place of ``handle``."""
        specs = [s for s in self.gateway.replanner.break_down(handle.spec, split, agent)
                 if s.id not in self.handles]
        tg = self._task_group
        if tg is None:
            raise VibeEngineError(f"task {handle.id} was broken down outside Orchestrator.run")
        parts = self.add_tasks(specs)
        for part in parts:
            part.split_from = handle.id
        await self._start(parts, tg)
        handle.status = TaskStatus.BROKEN_DOWN
        ids = [s.id for s in specs] or [
            t for t in self.handles if t.startswith(f"{handle.id}.")  # a requeued attempt
        ]
        if split.add_verification and ids:
            return await self.wait_for(handle.id, ids[-1])  # it depends on every part
        return [await self.wait_for(handle.id, t) for t in ids]

    async def _end(self, handle: TaskHandle) -> None:
        """What a task's end changes at once, then its end recorded (maybe by another task:
        see :class:`Endings`)."""
        handle.finished_at = anyio.current_time()
        self.allocator.unregister(handle.id)  # its leases and waits go back to the pool
        self.gateway.router.forget(handle.id)
        self._deadlines.drop(handle.id)  # an attempt given up on is watched no more
        with shield():
            await self._endings.record(handle)

    async def _finish(self, handle: TaskHandle) -> None:
        """Record how the task ended (through :attr:`_endings`, a bounded number at once);
        its ``done`` is set (and :attr:`on_ended` called) even when recording failed."""
        try:
            await self._record_end(handle)
        finally:
            handle.set_done()
            self.on_ended(handle)

    async def _record_end(self, handle: TaskHandle) -> None:
        await self.gateway.router.save_learned(self.store)  # R4.3 across restarts
        if not handle.finished and handle.status is not TaskStatus.PENDING:
            # the run itself was cancelled (a task still waiting for its dependencies
            # stays pending): resumable
            handle.status = TaskStatus.INTERRUPTED
            handle.reason = handle.reason or "interrupted"
        result = stored_result(handle)
        # result.json goes with usage.json: one folder, one worker-thread hop
        beside = ({"result.json": self._session.result_document(handle.id, result)}
                  if handle.status is TaskStatus.COMPLETED else None)
        written = False
        if self._tracked(handle.id):
            try:  # off the event loop, and current before the task counts as ended
                written = await self.tracker.end_task(handle.id, handle.status,
                                                      beside=beside)
            except LocalFileError as exc:  # the usage itself is in the store already
                handle.status, handle.reason = TaskStatus.FAILED, str(exc)
                result = None
        if handle.status in (TaskStatus.COMPLETED, TaskStatus.FINISHED):
            await self.controller.discard(handle.id)  # a pause that never took effect
        if handle.status is TaskStatus.COMPLETED and not written:
            await self._session.write_result_off_loop(handle.id, result)
        await self._session.save_task(handle, result)
        self.bus.emit(
            f"task_{handle.status}",
            handle.reason or f"task {handle.id} {handle.status}",
            task_id=handle.id, agent=handle.spec.agent,
            level="info" if handle.status is TaskStatus.COMPLETED else "warning",
        )

    def forget(self, task_id: str) -> bool:
        """Drop every part's in-memory state of an ended task (a long-running ``serve``
        would otherwise hold each of its grouped tasks until it stops); its usage, its
        record and its files stay in the store and the state directory, so a later
        :meth:`spawn` of the id continues from them.  False when the task is unknown
        or has not ended."""
        handle = self.handles.get(task_id)
        if handle is None or not handle.done.is_set():
            return False
        del self.handles[task_id]
        self._parents.pop(task_id, None)
        self._prior.pop(task_id, None)
        self.parts.on_forget(task_id)
        self.forgotten += 1
        return True

    async def _report(self) -> RunReport:
        report = await build_report(self.session_id, self.handles.values(), self.tracker,
                                    self.store)
        if self.forgotten:  # tasks forgotten once ended are reported from the store
            report.outcomes.update(await forgotten_outcomes(
                self.session_id, self.handles, self.store))
        return report

    def _tracked(self, task_id: str) -> bool:
        """Whether the tracker registered the task (O(1): ``tracker.tasks()`` lists all)."""
        try:
            self.tracker.task_scope(task_id)
        except VibeEngineError:
            return False
        return True

