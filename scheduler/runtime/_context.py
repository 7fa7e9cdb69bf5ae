"""The agent's only door to the world (DESIGN.md: every side effect is governed).

``ctx.llm.complete`` goes through the gateway (route, estimate, admit, call,
settle); ``ctx.files.write`` and ``ctx.shell.run`` are admitted against the
operation budgets and counted; ``ctx.wait_for`` waits for another task's
result; ``ctx.checkpoint`` saves progress durably.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from scheduler.allocator import WaiterStatistics
from scheduler.budget import Tracker
from scheduler.config import TaskSpec
from scheduler.core import (
    Completion,
    LibraryLogger,
    LocalFileError,
    Message,
    TaskAbortedError,
    TextSink,
    VibeEngineError,
    get_logger,
    off_loop,
)
from scheduler.deadlock import LockManager, TaskLocks
from scheduler.routing import task_info
from scheduler.runtime._gateway import Gateway
from scheduler.runtime._shell import is_dangerous, scrubbed_env
from scheduler.runtime._tools import Tool, ToolLoop, ToolLoopResult
from scheduler.runtime._waits import waits_of
from scheduler.store import Store, task_key
from scheduler.tasks import TaskHandle, TaskStatus


class PathEscapeError(VibeEngineError):
    """An agent tried to touch a file outside its workspace."""


@dataclass(frozen=True, slots=True)
class ShellResult:
    command: str
    returncode: int
    stdout: str
    stderr: str
    dangerous: bool


#: A task in one of these has no attempt running: its agent's calls are refused.
_OVER = frozenset({TaskStatus.COMPLETED, TaskStatus.FINISHED, TaskStatus.FAILED,
                   TaskStatus.INTERRUPTED})


class LlmClient:
    """``ctx.llm``: model calls through the gateway."""

    __slots__ = ("_ctx", "_gateway", "_task")  # one per waiting agent

    def __init__(self, gateway: Gateway, task: TaskHandle,
                 ctx: AgentContext | None = None) -> None:
        self._gateway = gateway
        self._task = task
        self._ctx = ctx

    def complete(
        self,
        messages: Sequence[Message],
        *,
        system: str = "",
        context: str = "",
        tools: Sequence[Mapping[str, Any]] = (),
        max_tokens: int = 1024,
        model: str | None = None,
        stream: bool = False,
        hints: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        on_text: TextSink | None = None,
    ) -> Coroutine[Any, Any, Completion]:
        """A model call through the gateway (await it).  ``messages`` may hold any content
        blocks; ``options`` pass Messages API options through (``temperature``,
        ``tool_choice``, ``thinking`` …; an unknown one is an error); with ``stream=True``,
        ``on_text`` receives the answer's text as it arrives.  After the answer, a
        checkpoint the task was asked for is saved (R3).

        The gateway's own coroutine: an agent waiting for its turn holds no frame here.
        Refused once the runtime ended the attempt (an abort, its time budget, the run's
        end) or the task: an agent that goes on after its cancellation spends nothing."""
        task = self._task
        if task.status in _OVER or ((scope := task.cancel_scope) is not None
                                    and scope.cancel_called):
            raise TaskAbortedError(task.id, "its attempt was ended; no more model calls")
        return self._gateway.complete(
            self._task, messages, system=system, context=context, tools=tools,
            max_tokens=max_tokens, model=model, stream=stream, hints=hints,
            options=options, on_text=on_text, checkpoint=self._ctx,
        )


class FileOps:
    """``ctx.files``: reads are free; every write is one file edit (R1.1)."""

    def __init__(self, ctx: AgentContext, root: Path) -> None:
        self._ctx = ctx
        self.root = root

    def _resolve(self, path: str | Path) -> Path:
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise PathEscapeError(f"{path} is outside the workspace {self.root}")
        return full

    async def read(self, path: str | Path) -> str:
        return await off_loop(partial(self._resolve(path).read_text, encoding="utf-8"))

    async def write(self, path: str | Path, content: str) -> Path:
        full = self._resolve(path)
        ctx = self._ctx
        held = await ctx.gateway.admit_ops(ctx.handle, file_edits=1)  # pauses at the limit
        try:
            async with ctx.open_resource(f"file:{full}"), ctx.critical("file_write"):
                try:
                    await off_loop(_write_text, full, content)
                except OSError as exc:  # disk full, a name too long: this task's error only
                    raise LocalFileError(full, exc.strerror or str(exc)) from exc
            await ctx.charge_ops(file_edits=1, held=held)
        finally:
            held()  # not charged (failed, cancelled): the count is free again
        return full


class ShellOps:
    """``ctx.shell``: every command counted; side-effecting ones counted as dangerous.

    A command runs in the task's workspace with the environment scrubbed of secrets
    (:func:`~scheduler.runtime._shell.scrubbed_env`); one that writes, runs other
    commands or touches a path outside the workspace is dangerous.
    """

    def __init__(self, ctx: AgentContext, cwd: Path) -> None:
        self._ctx = ctx
        self.cwd = cwd

    async def run(self, command: str, *, timeout_s: float = 60.0) -> ShellResult:
        ctx = self._ctx
        dangerous = is_dangerous(command, self.cwd)
        held = await ctx.gateway.admit_ops(ctx.handle, shell_commands=1,
                                           dangerous_commands=int(dangerous))
        try:
            await off_loop(partial(self.cwd.mkdir, parents=True, exist_ok=True))
            name = "git_commit" if command.lstrip().startswith("git commit") else "shell"
            async with ctx.critical(name):
                with anyio.fail_after(timeout_s):
                    proc = await anyio.run_process(command, cwd=self.cwd, check=False,
                                                   env=self._env())
            await ctx.charge_ops(shell_commands=1, dangerous_commands=int(dangerous),
                                 held=held)
        finally:
            held()  # not charged (failed, timed out, cancelled): the count is free again
        return ShellResult(
            command, proc.returncode, proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"), dangerous,
        )


    def _env(self) -> dict[str, str]:
        config = self._ctx.gateway.config
        return scrubbed_env(api_key_env=config.provider.api_key_env,
                            secret_env=config.shell.secret_env)


class AgentContext:
    """Everything an agent may do, governed and counted."""

    def __init__(
        self,
        *,
        task: TaskHandle,
        gateway: Gateway,
        store: Store,
        wait_for: Callable[[str, str], Awaitable[Any]],
        workspace: Path | None = None,
        locks: LockManager | None = None,
    ) -> None:
        self.handle = task
        self.task: TaskSpec = task.spec
        self.profile = task.profile
        self.attempt = task.attempt
        self.gateway = gateway
        self.tracker: Tracker = gateway.tracker
        self.store = store
        self._pause = gateway.admission.controller
        self._checkpoint_source: Callable[[], Mapping[str, Any]] | None = None
        self.llm = LlmClient(gateway, task, self)
        self._wait_for = wait_for
        # made on first use: most agents never log, edit files or lock (or look at their
        # workspace), and a run of 10,000 waiting agents would hold them all
        self._workspace = workspace
        self._lock_manager = locks
        self._log: LibraryLogger | None = None
        self._files: FileOps | None = None
        self._shell: ShellOps | None = None
        self._locks: TaskLocks | None = None

    @property
    def workspace(self) -> Path:
        """The task's folder for its files and commands (default: its id under the state
        directory's ``workspace``)."""
        if self._workspace is None:
            self._workspace = self.gateway.config.state_dir / "workspace" / self.task.id
        return self._workspace

    @property
    def log(self) -> LibraryLogger:
        """The agent's logger, bound to its task, agent and attempt."""
        if self._log is None:
            self._log = get_logger("vibe_engine.agent").bind(
                task_id=self.task.id, agent=self.task.agent, attempt=self.attempt)
        return self._log

    @property
    def files(self) -> FileOps:
        """File operations inside the task's workspace, counted as file edits."""
        if self._files is None:
            self._files = FileOps(self, self.workspace)
        return self._files

    @files.setter
    def files(self, ops: FileOps) -> None:
        self._files = ops

    @property
    def shell(self) -> ShellOps:
        """Shell commands in the task's workspace, counted (dangerous ones apart)."""
        if self._shell is None:
            self._shell = ShellOps(self, self.workspace)
        return self._shell

    @shell.setter
    def shell(self, ops: ShellOps) -> None:
        self._shell = ops

    @property
    def locks(self) -> TaskLocks:
        """The task's named locks (deadlock-checked, R5.6)."""
        if self._locks is None:
            manager = self._lock_manager if self._lock_manager is not None else LockManager()
            self._locks = TaskLocks(manager, self.task.id)
        return self._locks

    @property
    def simplify(self) -> bool:
        """True when replanning asked the agent to do only the key part (R6.7)."""
        return bool(self.handle.signals.simplify)

    def report_quality(self, score: float, *, reason: str = "") -> str | None:
        """R4.3: the agent's own verdict on its last answer, from 0 (wrong) to 1 (good):
        tests it ran, a parse that failed.  Below ``routing.quality_floor`` the task is
        upgraded to the next tier (logged) and similar tasks learn to start there.
        Returns the tier the task's next routed call will use at least, after an
        upgrade; ``None`` otherwise."""
        model = self.handle.model
        if not model:
            raise VibeEngineError("report_quality needs a model call to judge")
        router = self.gateway.router
        upgrade = router.report_outcome(task_info(self.handle), model, success=True,
                                        quality=max(0.0, min(1.0, float(score))))
        self.log.info("quality_reported", model=model, score=score, reason=reason,
                      upgraded_to=upgrade.to_model if upgrade else None)
        return upgrade.to_model if upgrade else None

    def waiting(self) -> tuple[WaiterStatistics, ...]:
        """R5.5: this task's requests waiting for a lease, each with its queue position
        (1 = next) and estimated wait; empty when none waits.  Read it from a task of the
        agent that runs beside the waiting call."""
        return waits_of(self.gateway.allocator, self.task.id)

    async def charge_ops(
        self, *, file_edits: int = 0, shell_commands: int = 0, dangerous_commands: int = 0,
        held: Callable[[], None] | None = None,
    ) -> None:
        """Charge operation counts; ``held`` (from ``admit_ops``) is let go as they are."""
        event = self.tracker.make_event(
            self.task.id, file_edits=file_edits, shell_commands=shell_commands,
            dangerous_commands=dangerous_commands,
        )
        crossings = await self.tracker.charge(event, ops_held=held)
        if crossings:  # R3.1: the operation budgets' alerts, as a call's
            await self.gateway.signal(self.handle, crossings)

    async def wait_for(self, task_id: str) -> Any:
        """Wait for another task's result (a wait-for edge while waiting)."""
        return await self._wait_for(self.task.id, task_id)

    @asynccontextmanager
    async def open_resource(self, name: str) -> AsyncIterator[None]:
        """Hold a named resource exclusively; waiting for it is a wait-for edge (R5.6)."""
        async with self.locks.open_lock(name):
            yield

    @asynccontextmanager
    async def critical(self, name: str) -> AsyncIterator[None]:
        """A critical operation that completes before a pause takes effect (R3.6).

        A model call inside it that would cross the budget may use the overdraft grace
        instead of pausing (R3.5) -- unless the operation started while a pause was
        already pending: it was not in progress when the limit was reached.
        """
        async with self._pause.open_critical(self.task.id, name):
            yield

    @property
    def checkpoint_requested(self) -> bool:
        """A critical budget alert asked for a checkpoint (R3.3); cleared by :meth:`checkpoint`."""
        return self.handle.signals.checkpoint_requested

    def checkpoint_source(self, state: Callable[[], Mapping[str, Any]]) -> None:
        """Register what to save when the runtime forces a checkpoint (R3.3)."""
        self._checkpoint_source = state

    async def checkpoint_if_requested(self) -> bool:
        """Save the registered state if a checkpoint was requested; True if saved."""
        if not self.checkpoint_requested or self._checkpoint_source is None:
            return False
        await self.checkpoint(self._checkpoint_source())
        self.log.info("checkpoint_forced")
        return True

    async def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Save progress durably; a requeued attempt or a resumed session reads it back
        (a later session running the same task id starts without it)."""
        await self.store.put_state("checkpoint", self._key, dict(state))
        self.handle.signals.checkpoint_requested = False

    async def load_checkpoint(self) -> dict[str, Any] | None:
        return await self.store.get_state("checkpoint", self._key)

    @property
    def _key(self) -> str:
        return task_key(self.tracker.session_id, self.task.id)

    async def between_turns(self) -> None:
        """Between two model turns: a pending pause takes effect (R3.4) and a requested
        checkpoint is saved (R3.3).  The next call's admission checks the budget."""
        await self.gateway.pause_point(self.handle)
        await self.checkpoint_if_requested()

    def tool_loop(self, tools: Sequence[Tool], **settings: Any) -> ToolLoop:
        """A governed model → tools → model loop (see :class:`ToolLoop` for ``settings``:
        ``system``, ``max_turns``, ``max_tokens``, ``model``, ``stream``, ``on_text`` …)."""
        return ToolLoop(self, tools, **settings)

    async def run_tools(self, messages: Sequence[Message], tools: Sequence[Tool],
                        **settings: Any) -> ToolLoopResult:
        """Run the tool loop to the model's end of turn, continuing a checkpointed one."""
        return await self.tool_loop(tools, **settings).run(messages)


def _write_text(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
