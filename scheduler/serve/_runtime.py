"""A serve run: an orchestrator whose tasks are the client keys (#21).

Every client key is a task of one long-running session (see :mod:`._keys`); its
agent only waits for the server to stop, while the HTTP handlers make the key's
model calls through the run's gateway — the one governed path (route → estimate →
admit → lease → call → settle → signal).  So status, the live view, metrics,
reports, pauses and ``vibe-engine decide KEY …`` see keys like any task.

Calls carrying ``x-vibe-task: NAME`` run as task ``KEY/NAME``, started on first use.
One with no call in flight for ``serve.group_idle_s`` ends and the run forgets it
(a client naming a task per conversation would otherwise grow the process without
bound); the next call under the name starts it again from its totals in the store.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio

from scheduler.config import TaskSpec, VibeConfig
from scheduler.core import (
    ConfigError,
    EventBus,
    StoreError,
    VibeEngineError,
    WallClock,
    get_logger,
)
from scheduler.runtime import AgentContext, Orchestrator, RunReport
from scheduler.serve._keys import (
    KeyEntry,
    KeyRing,
    agent_name,
    group_id,
    group_spec,
    group_template,
    key_problem,
    task_spec,
)
from scheduler.serve._metrics import ServeMetrics
from scheduler.serve._tombstones import Tombstones
from scheduler.serve._upstream import UpstreamProvider
from scheduler.store import Store
from scheduler.tasks import TaskHandle

_log = get_logger("vibe_engine.serve")
_DEFAULT_UPSTREAM = "https://api.anthropic.com"


def upstream_url(config: VibeConfig) -> str:
    return config.serve.upstream_base_url or config.provider.base_url or _DEFAULT_UPSTREAM


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def upstream_provider(config: VibeConfig, env: Mapping[str, str] | None = None
                      ) -> UpstreamProvider:
    """The upstream client with the server's key; a missing key is an error, except for
    an upstream on this machine (the fake API needs none)."""
    env = os.environ if env is None else env
    url, name = upstream_url(config), config.serve.upstream_key_env
    key = env.get(name, "")
    if not key and not _loopback(url):
        raise ConfigError("serve.upstream_key_env", name,
                          f"environment variable is not set; the upstream {url} needs a key")
    problem = key_problem(key) if key else None
    if problem is not None:
        raise ConfigError("serve.upstream_key_env", name, problem)
    return UpstreamProvider(url, key, timeout_s=config.serve.upstream_timeout_s)


class _KeyAgent:
    """A key's task: alive as long as the server, its calls made by the HTTP handlers.
    A grouped task (``KEY/NAME``) also ends once it has had no call in flight for
    ``serve.group_idle_s``."""

    def __init__(self, served: Served) -> None:
        self._served = served

    async def run(self, ctx: AgentContext) -> Any:
        self._served.key_started(ctx.handle)
        await self._served.wait_stopping_or_idle(ctx.handle.id)
        return {"requests": self._served.requests.get(ctx.handle.id, 0)}


class _Group:
    """A grouped task of the run: its start, its calls in flight and its idle watch."""

    __slots__ = ("calls", "closed", "handle", "idle", "last", "refusal", "started", "vetted")

    def __init__(self) -> None:
        #: Set once the task runs (its budget scope is registered); None after that.
        self.started: anyio.Event | None = anyio.Event()
        self.handle: TaskHandle | None = None
        #: Calls counted from :meth:`Served.group` until :meth:`Served.release`.
        self.calls = 0
        #: Loop time the last call ended (or the task started).
        self.last = 0.0
        #: The agent's wait, whose deadline is the idle end while no call is in flight.
        self.idle: anyio.CancelScope | None = None
        #: Set when the task idles out; the event is set once the run forgot it.
        self.closed: anyio.Event | None = None
        #: Set once the store said whether the task ended earlier and its spawn began
        #: (calls arriving meanwhile wait for it); None after that.
        self.vetted: anyio.Event | None = anyio.Event()
        #: Why the task was refused before it started (it ended earlier): its waiters'.
        self.refusal: VibeEngineError | None = None


class GroupUnavailableError(VibeEngineError):
    """A grouped task (``KEY/NAME``) ended without serving: its calls cannot run."""

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id, self.reason = task_id, reason
        super().__init__(f"task {task_id} could not start: {reason}; the next call grouped "
                         f"under it starts it again")


class GroupLimitError(VibeEngineError):
    """Key ``key`` already has ``serve.max_tasks_per_key`` grouped tasks: a call naming a
    new one is refused (a client naming a task per request would otherwise grow the
    server's memory and store without bound)."""

    def __init__(self, key: str, limit: int, idle_s: float) -> None:
        self.key, self.limit = key, limit
        frees = (f"one is freed once it has had no call for serve.group_idle_s = {idle_s:g} s"
                 if idle_s else "serve.group_idle_s is unset, so none is freed while serve "
                 "runs")
        super().__init__(f"key {key!r} already has {limit:,} grouped tasks on this server "
                         f"(serve.max_tasks_per_key); send the call under a name in use, or "
                         f"without x-vibe-task; {frees}")


class GroupEndedError(VibeEngineError):
    """A grouped task (``KEY/NAME``) ran and has ended (its wall-time budget ran out,
    say): its budget is spent, so calls grouped under it are refused, not started again."""

    def __init__(self, task_id: str, status: str, reason: str) -> None:
        self.task_id, self.status, self.reason = task_id, status, reason
        key = task_id.partition("/")[0]
        super().__init__(f"task {task_id} has ended ({status}: {reason}); calls grouped "
                         f"under it cannot run: send them with another x-vibe-task name, or "
                         f"raise serve.keys[name={key!r}].task_budget in the serve config")


class Served:
    """The orchestrator, keys and upstream of one ``vibe-engine serve`` process.

    ``async with served.running():`` runs the orchestrator until the block ends;
    meanwhile :meth:`handle` gives the task of a key for the gateway's calls.
    """

    def __init__(
        self, config: VibeConfig, *, provider: UpstreamProvider | None = None,
        env: Mapping[str, str] | None = None, store: Store | None = None,
        wall: WallClock | None = None, bus: EventBus | None = None,
    ) -> None:
        serve = config.serve
        self.keys = KeyRing(serve, env)
        if not len(self.keys):
            raise ConfigError("serve.keys", [], "add at least one [[serve.keys]] entry")
        # a held request waits at most max_hold_s (serve's decision timeout)
        alerts = config.alerts.model_copy(update={"decision_timeout_s": serve.max_hold_s})
        self.config = config.model_copy(update={
            "tasks": tuple(task_spec(e.config) for e in self.keys.entries()),
            "alerts": alerts,
        })
        self.provider = provider or upstream_provider(config, env)
        self.orchestrator = Orchestrator(
            self.config, provider=self.provider,
            agents={agent_name(e.name): lambda: _KeyAgent(self) for e in self.keys.entries()},
            store=store, wall=wall, bus=bus,
        )
        # a key's task ends when the server stops; a serve continuing its session (a pinned
        # session_id, restarted) serves the key again rather than keeping it ended
        self.orchestrator.rerun = {e.name for e in self.keys.entries()}
        self.gateway = self.orchestrator.gateway
        self.metrics = ServeMetrics(self.orchestrator, {e.name for e in self.keys.entries()})
        self.stopping = anyio.Event()
        #: Forwarded requests per key (the key task's result when the server stops).
        self.requests: dict[str, int] = {}
        self._started: set[str] = set()
        #: The run's report, once the server stopped.
        self.report: RunReport | None = None
        self._ready = anyio.Event()
        self._failure: BaseException | None = None
        #: Grouped tasks (``KEY/NAME``) of the run by id, while the run holds them.
        self._grouped: dict[str, _Group] = {}
        #: How many of ``_grouped`` each key has (capped by ``serve.max_tasks_per_key``).
        self._live: dict[str, int] = {}
        self._max_tasks = serve.max_tasks_per_key
        #: Grouped tasks that ran and ended (not idle): their status and reason, so
        #: their calls are still refused once the run forgot them (see ``_tombstones``).
        self.ended = Tombstones(self.orchestrator.store, serve.max_tasks_per_key)
        self.orchestrator.add_service(self.ended.keep)
        self._idle_s = serve.group_idle_s or 0.0
        #: What every grouped task of a key shares, by key name (made on first use).
        self._templates: dict[str, TaskSpec] = {}
        self.orchestrator.on_ended.connect(self._group_ended)

    def key_started(self, handle: TaskHandle) -> None:
        grouped = self._grouped.get(handle.id)
        if grouped is not None:  # a grouped task: its budget scope is registered now
            if grouped.started is not None:
                grouped.started.set()  # its waiters hold their own reference
                grouped.started = None
            grouped.last = anyio.current_time()
            return
        self._started.add(handle.id)
        if len(self._started) == len(self.keys):
            self._ready.set()

    def handle(self, entry: KeyEntry) -> TaskHandle | None:
        """The running task of ``entry`` (None once the server is stopping)."""
        handle = self.orchestrator.handles.get(entry.name)
        if handle is None or handle.finished or self.stopping.is_set():
            return None
        return handle

    async def group(self, entry: KeyEntry, name: str) -> TaskHandle | None:
        """The running task ``KEY/NAME`` of ``entry``'s calls grouped under ``name``,
        started in the run on first use with the key's task as its parent (R1.2); None
        once the server is stopping.  Raises :class:`GroupUnavailableError` when the
        task ended without serving (it could not start: the store was unreachable), and
        :class:`GroupEndedError` when it ran and has ended.

        The call is counted in flight until :meth:`release`: the task does not idle out
        meanwhile.  Calls that arrive while the task starts wait for that one start; a
        start that failed is forgotten once its waiters know, so the next call starts it
        again; a call that arrives while the task idles out waits until the run forgot
        it, then starts it again (from its totals in the store)."""
        if self.handle(entry) is None:
            return None
        task_id = group_id(entry.name, name)
        while True:
            group = self._grouped.get(task_id)
            if group is None:
                group = await self._start(entry, name, task_id)
                if group is None:
                    return None
            if group.closed is None:
                break
            await group.closed.wait()  # idling out: started again once forgotten
            if self.stopping.is_set():
                return None
        self._count(group)  # before any await: the task cannot idle out from under it
        try:
            handle = await self._running(group, task_id)
        except BaseException:
            self._uncount(group)
            raise
        if handle is None:
            self._uncount(group)
        return handle

    async def _start(self, entry: KeyEntry, name: str, task_id: str) -> _Group | None:
        """Start ``KEY/NAME`` (its group is registered before the first await, so calls
        arriving meanwhile wait for this start); :class:`GroupEndedError` when it ended."""
        ended = self.ended.held(task_id)
        if ended is not None:  # it ran and was forgotten: its budget is spent
            raise GroupEndedError(task_id, *ended)
        live = self._live.get(entry.name, 0)
        if live >= self._max_tasks:
            raise GroupLimitError(entry.name, self._max_tasks, self._idle_s)
        self._live[entry.name] = live + 1
        group = self._grouped[task_id] = _Group()
        template = self._templates.get(entry.name)
        if template is None:
            template = self._templates[entry.name] = group_template(entry.config)
        try:
            await self._vet(task_id, group, _budget(template))
            group.handle = await self.orchestrator.spawn(
                group_spec(template, entry.name, name))
        except VibeEngineError as exc:  # ended earlier, unreadable, or the run is ending
            self._drop(task_id, group)
            if group.started is not None:
                group.started.set()
            if group.refusal is exc:
                raise
            return None
        except BaseException:  # this call was cancelled before the task was added
            if group.handle is None and task_id not in self.orchestrator.handles:
                self._drop(task_id, group)  # the next call starts it
                group.refusal = GroupUnavailableError(task_id, "the call starting it ended")
                if group.started is not None:
                    group.started.set()
            raise
        finally:
            if group.vetted is not None:
                group.vetted.set()  # its waiters hold their own reference
                group.vetted = None
        return group

    async def _vet(self, task_id: str, group: _Group, budget: dict[str, Any]) -> None:
        """Refuse ``task_id`` if the store records it ended under ``budget`` (another
        replica's, an earlier run's, or one this run no longer holds in memory)."""
        try:
            ended = await self.ended.stored(task_id, budget)
        except StoreError as exc:
            group.refusal = GroupUnavailableError(task_id, f"its record cannot be read: {exc}")
            raise group.refusal from exc
        if ended is not None:
            group.refusal = GroupEndedError(task_id, *ended)
            raise group.refusal

    async def _running(self, group: _Group, task_id: str) -> TaskHandle | None:
        vetted = group.vetted
        if vetted is not None:  # another call's start asks the store first
            await vetted.wait()
        # the handle is in the run's table as soon as another call's spawn began
        handle = group.handle or self.orchestrator.handles.get(task_id)
        if handle is None:  # that start was refused, or failed (the run is ending)
            if group.refusal is not None:
                raise group.refusal
            return None
        started = group.started
        if started is not None:
            async with anyio.create_task_group() as tg:
                # a task that fails before its agent runs (the store is down) ends instead
                async def first(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()
                tg.start_soon(first, started)
                tg.start_soon(first, handle.done)
        if self.stopping.is_set():
            return None
        if handle.finished:
            reason = handle.reason or str(handle.status)
            if started is None or started.is_set():  # it ran: a spent budget stays spent
                raise GroupEndedError(task_id, str(handle.status), reason)
            self._drop(task_id, group)  # it never ran: the next call starts it again
            raise GroupUnavailableError(task_id, reason)
        return handle

    def _drop(self, task_id: str, group: _Group) -> None:
        """Forget ``group`` (task ``task_id``) if the run still holds it."""
        if self._grouped.get(task_id) is group:
            del self._grouped[task_id]
            key = task_id.partition("/")[0]
            self._live[key] -= 1
            if not self._live[key]:
                del self._live[key]

    def _count(self, group: _Group) -> None:
        group.calls += 1
        if group.idle is not None:
            group.idle.deadline = math.inf

    def _uncount(self, group: _Group) -> None:
        group.calls -= 1
        if group.calls == 0:
            group.last = anyio.current_time()
            if group.idle is not None:
                group.idle.deadline = group.last + self._idle_s

    def release(self, handle: TaskHandle) -> None:
        """A call :meth:`group` gave ``handle`` for has ended (however): once none is
        in flight, the task's idle time starts.  A key's own task is not counted."""
        group = self._grouped.get(handle.id)
        if group is not None and group.handle is handle:
            self._uncount(group)

    async def wait_stopping_or_idle(self, task_id: str) -> None:
        """The agent of task ``task_id``: until the server stops, or -- a grouped task
        with ``serve.group_idle_s`` -- until no call was in flight for that long."""
        group = self._grouped.get(task_id)
        if group is None or not self._idle_s:
            await self.stopping.wait()
            return
        while not self.stopping.is_set():
            with anyio.CancelScope() as scope:
                group.idle = scope
                if not group.calls:
                    scope.deadline = group.last + self._idle_s
                await self.stopping.wait()
            group.idle = None
            if not group.calls and anyio.current_time() >= group.last + self._idle_s:
                # no await from the check to here: a call arriving now waits for `closed`
                group.closed = anyio.Event()
                _log.debug("serve_group_idle", task_id=task_id, idle_s=self._idle_s)
                return

    def _group_ended(self, handle: TaskHandle) -> None:
        """A task's end is recorded: a grouped one is forgotten (the server stopping
        keeps its tasks for the run's report).  One that ran and ended other than idle
        leaves a tombstone, so its calls are still refused."""
        group = self._grouped.get(handle.id)
        if group is None or (group.handle is not None and group.handle is not handle):
            return
        if self.stopping.is_set():
            if group.closed is not None:
                group.closed.set()  # its waiters learn that the server is stopping
            return
        self._drop(handle.id, group)
        if group.closed is None and group.started is None:  # ran, then ended: spent
            self.ended.add(handle.id, str(handle.status), handle.reason or str(handle.status),
                           _budget(handle.spec))
        self.orchestrator.forget(handle.id)
        if group.closed is not None:
            group.closed.set()

    async def _run(self) -> None:
        try:
            self.report = await self.orchestrator.run()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._ready.set()  # a run that failed to start must not leave running() waiting

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Served]:
        """Run the orchestrator (its keys' tasks and services) while the block runs."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run)
            await self._ready.wait()
            if self._failure is not None or len(self._started) < len(self.keys):
                missing = sorted({e.name for e in self.keys.entries()} - self._started)
                why = self._failure or f"the run ended before key(s) {missing} started"
                raise VibeEngineError(f"serve could not start: {why}")
            _log.info("serve_started", keys=sorted(self._started),
                      session_id=self.orchestrator.session_id)
            try:
                yield self
            finally:
                self.stopping.set()  # the keys' tasks complete; the run ends and closes


def _budget(spec: TaskSpec) -> dict[str, Any]:
    """The limits a grouped task runs under, as its ended record keeps them."""
    return spec.budget.model_dump(mode="json") if spec.budget is not None else {}
