"""Whether a task's attempt runs again: a retry after a failure on a model that may be
the wrong choice (R4.3), or a deadlock victim going back in the queue (R5.7)."""

from __future__ import annotations

from scheduler.config import DeadlockConfig, RoutingConfig
from scheduler.core import EventBus, FinishRequestedError, VibeEngineError, get_logger
from scheduler.routing import Router, task_info
from scheduler.tasks import TaskHandle, TaskStatus

_log = get_logger("vibe_engine.orchestrator")


def attempt_failed(handle: TaskHandle, exc: Exception | SystemExit, router: Router,
                   params: RoutingConfig) -> None:
    """How an attempt that raised ``exc`` ended: ``sys.exit()`` in a plugin (a wrapped
    command-line tool's ``main``) ends its task, not the run and every task with it."""
    if isinstance(exc, FinishRequestedError):
        handle.status = TaskStatus.FINISHED
        handle.reason = f"saved and finished ({exc.source})"
    elif isinstance(exc, VibeEngineError):  # the runtime's own stops: not the model's fault
        handle.status, handle.reason = TaskStatus.FAILED, str(exc)
    else:
        _log.exception("agent_crashed", task_id=handle.id, agent=handle.spec.agent)
        handle.status = TaskStatus.FAILED
        handle.reason = f"agent crashed: {type(exc).__name__}: {exc}"
        retry_after_failure(handle, router, params)


def next_attempt(handle: TaskHandle, cancelled: bool, bus: EventBus,
                 deadlock: DeadlockConfig) -> bool:
    """After an attempt (``cancelled``: its scope caught a cancellation): whether another
    runs -- a retry after a failure (R4.3) or a requeued deadlock victim (R5.7)."""
    abort, handle.abort = handle.abort, None
    retry, handle.retry = handle.retry, ""
    if retry and abort is None:
        handle.attempt += 1
        handle.status, handle.reason = TaskStatus.REQUEUED, ""
        bus.emit("task_retried", f"task {handle.id} retried: {retry}",
                 task_id=handle.id, attempt=handle.attempt, level="warning")
        return True
    if not cancelled or abort is None:
        return False
    if not abort.requeue or handle.attempt > deadlock.max_requeues:
        handle.status = TaskStatus.FAILED
        handle.reason = f"{abort.reason} (attempt {handle.attempt}; no requeue left)"
        return False
    handle.attempt += 1
    handle.status = TaskStatus.REQUEUED
    bus.emit("task_requeued", f"task {handle.id} requeued: {abort.reason}",
             task_id=handle.id, attempt=handle.attempt)
    return True


def retry_after_failure(handle: TaskHandle, router: Router, params: RoutingConfig) -> None:
    """R4.3: a task that failed after its model finished is a signal of a wrong choice.

    With ``routing.retry_failed_attempts`` the attempt is retried while the failures are
    on the cheapest tier, and once more after the router upgrades the task: haiku
    failing twice moves the task (and similar later ones) to the next tier.
    """
    if not (handle.model and handle.calls):
        return
    upgrade = router.report_outcome(task_info(handle), handle.model, success=False)
    if params.retry_failed_attempts and handle.attempt < params.max_attempts and (
        upgrade is not None or handle.model == router.catalog.cheapest
    ):
        handle.retry = (f"failed on {handle.model}: {handle.reason}"
                        + (f"; next attempt on {upgrade.to_model}" if upgrade else ""))
