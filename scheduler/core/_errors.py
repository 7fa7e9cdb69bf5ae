"""The one exception tree of vibe-engine.

::

    VibeEngineError
    ├── ConfigError              bad config: names the field path and the value
    ├── InvalidArgumentError     a bad call argument or usage value (also a ValueError)
    ├── PluginError              an agent plugin or policy that cannot be loaded
    ├── StoreError               the durable store failed
    ├── LocalFileError           a local file (usage.json, the workspace) cannot be written
    │   └── StoreUnavailableError  the store cannot be reached (Redis down)
    ├── BudgetError
    │   ├── BudgetExceededError  a call would cross a budget limit
    │   └── OverdraftDeniedError grace already used or a previous overdraft unpaid
    ├── AllocationError
    │   ├── WouldBlockError      a ``*_nowait`` request cannot be granted now
    │   └── LeaseError           unknown, expired or foreign lease id
    ├── TaskAbortedError         a task was aborted (deadlock victim, retry limit)
    ├── FinishRequestedError     a paused task was told to save progress and finish
    ├── DecisionError            an invalid or unauthorised pause decision
    ├── SessionError             no session to resume, or a state directory in use
    ├── ResultError              an agent's result cannot be kept (not JSON, too large)
    └── ProviderError            a model provider failed (carries the model)
        ├── RateLimitedError     429 rate_limit_error: our quota, retry after a delay
        ├── OverloadedError      529 overloaded_error: the model's health
        ├── ProviderTimeoutError the call timed out
        ├── SpendLimitError      the provider's spend limit: never retried, pauses
        └── ModelUnavailableError the model is marked unavailable

Errors carry their context as attributes so callers never parse messages.
Cancellation is never wrapped or swallowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.core._usage import Usage


class VibeEngineError(Exception):
    """Root of every error raised by vibe-engine."""


class ConfigError(VibeEngineError):
    """A configuration value is invalid.

    ``field`` is the dotted path (``budgets.session.tokens``), ``value`` the
    offending value as given.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"config error at {field}={value!r}: {reason}")


class InvalidArgumentError(VibeEngineError, ValueError):
    """A call argument or a usage value is invalid: ``argument`` names it.

    Raised at the entry of a model call (``max_tokens=None``, a negative
    ``max_tokens``, messages that are not a list of dicts …) and by every store
    for usage that would corrupt the ledger (negative or non-finite amounts).
    """

    def __init__(self, argument: str, value: Any, reason: str) -> None:
        self.argument = argument
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {argument}={value!r}: {reason}")


class PluginError(VibeEngineError):
    """An agent plugin or a named policy/store cannot be loaded or is invalid."""

    def __init__(self, name: str, reason: str, available: list[str] | None = None) -> None:
        self.name = name
        self.reason = reason
        self.available = sorted(available or [])
        hint = f" (available: {', '.join(self.available)})" if self.available else ""
        super().__init__(f"cannot load {name!r}: {reason}{hint}")


class StoreError(VibeEngineError):
    """The durable store failed."""


class LocalFileError(VibeEngineError):
    """A local file could not be written (disk full, a file name too long …).

    It fails the one task it belongs to; usage already recorded stays in the store.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot write {path}: {reason}")


class StoreUnavailableError(StoreError):
    """The store cannot be reached; no new grants are made while fail-closed."""


class BudgetError(VibeEngineError):
    """Base of budget errors."""


class BudgetExceededError(BudgetError):
    """A call would take a scope past the limit of one of its dimensions."""

    def __init__(
        self, scope: str, dimension: str, used: float, limit: float, requested: float = 0,
        *, held: float = 0, shared: bool = False,
    ) -> None:
        self.scope = scope
        self.dimension = dimension
        #: Counts ``held``: what calls (or operations) under way hold until charged --
        #: this process's when its own check refused, every process's when a shared
        #: ledger did (``shared``).  ``used - held`` was spent.
        self.used = used
        self.limit = limit
        self.requested = requested
        self.held = held
        self.shared = shared
        # what was spent and what is held stated apart: a refusal while little is spent
        # says so, not that the budget is used
        amount = (f"used {used:g}" if not held
                  else f"spent {used - held:g} + held by calls under way {held:g}")
        super().__init__(
            f"budget exceeded for {scope}: {dimension} {amount} + requested "
            f"{requested:g} > limit {limit:g}"
        )


class OverdraftDeniedError(BudgetError):
    """Overdraft refused: grace already used, a previous overdraft unpaid, or too large."""

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"overdraft denied for task {task_id}: {reason}")


class AllocationError(VibeEngineError):
    """Base of allocator errors."""


class WouldBlockError(AllocationError):
    """A non-blocking request could not be granted immediately."""


class LeaseError(AllocationError):
    """A lease id is unknown, expired, or not held by the caller."""


class TaskAbortedError(VibeEngineError):
    """A task was aborted by the runtime (deadlock victim, retry limit reached)."""

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"task {task_id} aborted: {reason}")


class FinishRequestedError(VibeEngineError):
    """A person decided "save and finish" for a paused task (R3.4).

    Raised out of the paused call so the agent unwinds; the orchestrator
    records the task as ``finished`` (not failed).
    """

    def __init__(self, task_id: str, source: str = "") -> None:
        self.task_id = task_id
        self.source = source
        super().__init__(f"task {task_id}: save and finish decided ({source or 'unknown'})")


class DecisionError(VibeEngineError):
    """A pause decision is invalid, for an unknown task, or not authorised."""


class SessionError(VibeEngineError):
    """A session cannot start or resume: the state directory is in use by another
    orchestrator (``pid`` set), or there is no such interrupted session."""

    def __init__(self, message: str, *, state_dir: str = "", pid: int | None = None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        super().__init__(message)


class ResultError(VibeEngineError):
    """What an agent's ``run()`` returned cannot be stored with its task (not
    JSON-serialisable, or larger than the cap)."""

    def __init__(self, task_id: str, reason: str) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"task {task_id}: result not kept: {reason}")


class ProviderError(VibeEngineError):
    """A model provider call failed.

    ``usage`` is what the provider billed for the failed call's attempts (a
    stream dropped after ``message_start`` still consumed its input), or None;
    ``cut_off``: the call ended after it went out with no usage known (the runtime's
    per-call limit ended it; an upstream's answer was cut short), so the provider may
    have billed what it never reported: the gateway charges the call's estimate.
    """

    def __init__(self, model: str, message: str, *, status: int | None = None,
                 cut_off: bool = False) -> None:
        self.model = model
        self.status = status
        self.usage: Usage | None = None
        self.cut_off = cut_off
        super().__init__(f"{model}: {message}")


class RateLimitedError(ProviderError):
    """429 rate_limit_error: wait ``retry_after`` seconds; the quota is ours."""

    def __init__(self, model: str, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(model, message, status=429)


class OverloadedError(ProviderError):
    """529 overloaded_error: the model is degraded."""


class ProviderTimeoutError(ProviderError):
    """The provider did not answer in time."""


class SpendLimitError(ProviderError):
    """The provider's spend limit was reached: never retried, pauses the task."""


class ModelUnavailableError(ProviderError):
    """The model is marked unavailable by health tracking."""
