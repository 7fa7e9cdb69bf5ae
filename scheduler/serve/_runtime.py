"""A serve run: an orchestrator whose tasks are the client keys (#21).

Every client key is a task of one long-running session (see :mod:`._keys`); its
agent only waits for the server to stop, while the HTTP handlers make the key's
model calls through the run's gateway — the one governed path (route → estimate →
admit → lease → call → settle → signal).  So status, the live view, metrics,
reports, pauses and ``vibe-engine decide KEY …`` see keys like any task.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio

from scheduler.config import TaskSpec, VibeConfig
from scheduler.core import ConfigError, EventBus, VibeEngineError, WallClock, get_logger
from scheduler.runtime import AgentContext, Orchestrator
from scheduler.serve._keys import (
    KeyEntry,
    KeyRing,
    agent_name,
    group_id,
    group_spec,
    group_template,
    task_spec,
)
from scheduler.serve._metrics import ServeMetrics
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
    return UpstreamProvider(url, key, timeout_s=config.serve.upstream_timeout_s)


class _KeyAgent:
    """A key's task: alive as long as the server, its calls made by the HTTP handlers."""

    def __init__(self, served: Served) -> None:
        self._served = served

    async def run(self, ctx: AgentContext) -> Any:
        self._served.key_started(ctx.handle)
        await self._served.stopping.wait()
        return {"requests": self._served.requests.get(ctx.handle.id, 0)}


class GroupUnavailableError(VibeEngineError):
    """A grouped task (``KEY/NAME``) ended without serving: its calls cannot run."""

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id, self.reason = task_id, reason
        super().__init__(f"task {task_id} could not start: {reason}; the next call grouped "
                         f"under it starts it again")


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
        self.gateway = self.orchestrator.gateway
        self.metrics = ServeMetrics(self.orchestrator, {e.name for e in self.keys.entries()})
        self.stopping = anyio.Event()
        #: Forwarded requests per key (the key task's result when the server stops).
        self.requests: dict[str, int] = {}
        self._started: set[str] = set()
        self._ready = anyio.Event()
        self._failure: BaseException | None = None
        #: Grouped tasks (``KEY/NAME``) by id, set once the task runs; then every one
        #: is the same set event (:attr:`_running`), not an event each.
        self._grouped: dict[str, anyio.Event] = {}
        self._running: anyio.Event | None = None
        #: What every grouped task of a key shares, by key name (made on first use).
        self._templates: dict[str, TaskSpec] = {}

    def key_started(self, handle: TaskHandle) -> None:
        grouped = self._grouped.get(handle.id)
        if grouped is not None:  # a grouped task: its budget scope is registered now
            grouped.set()
            if self._running is None:
                self._running = grouped
            self._grouped[handle.id] = self._running  # its waiters hold their own
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

        Calls that arrive while the task starts wait for that one start; a start that
        failed is forgotten once its waiters know, so the next call starts it again."""
        key = self.handle(entry)
        if key is None:
            return None
        task_id = group_id(entry.name, name)
        started = self._grouped.get(task_id)
        if started is None:
            started = self._grouped[task_id] = anyio.Event()
            template = self._templates.get(entry.name)
            if template is None:
                template = self._templates[entry.name] = group_template(entry.config)
            try:
                await self.orchestrator.spawn(group_spec(template, entry.name, name))
            except VibeEngineError:  # the run is ending
                started.set()
                return None
        handle = self.orchestrator.handles.get(task_id)
        if handle is None:
            return None
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
            if started.is_set():  # it ran: starting it again would renew a spent budget
                raise GroupEndedError(task_id, str(handle.status), reason)
            if self._grouped.get(task_id) is started:
                del self._grouped[task_id]  # it never ran: the next call starts it again
            raise GroupUnavailableError(task_id, reason)
        return handle

    async def _run(self) -> None:
        try:
            await self.orchestrator.run()
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
                raise VibeEngineError(f"serve could not start: {self._failure}")
            _log.info("serve_started", keys=sorted(self._started),
                      session_id=self.orchestrator.session_id)
            try:
                yield self
            finally:
                self.stopping.set()  # the keys' tasks complete; the run ends and closes
