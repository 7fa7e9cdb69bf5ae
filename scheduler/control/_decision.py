"""A person's decision about a paused task, and the checks every way in applies (R3.4).

Decisions arrive from Python, from the control socket and from the store (written by
``vibe-engine decide`` when no orchestrator runs).  Each is checked by
:func:`validate_decision`: a known action, and amounts that are finite positive
numbers.  For one pause the first decision wins; a later one is refused with
:func:`already_decided`, naming the first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from scheduler.budget import ScopeState
from scheduler.control._stored import paused_session, review_summary
from scheduler.core import DecisionError
from scheduler.store import Store, task_key

#: ``resume`` is never a person's: a pause at a day budget lifts itself with it once that
#: day is over (``scheduler.control._new_day``).
DecisionAction = Literal["add_budget", "finish", "review", "resume"]
#: What a person may decide.
ACTIONS: tuple[DecisionAction, ...] = ("add_budget", "finish", "review")
#: Dimensions a person may add to with ``add_budget``.
ADDABLE = ("tokens", "cost_usd", "time_s", "file_edits", "shell_commands")
#: Of those, the ones counted in whole units.
WHOLE = ("tokens", "file_edits", "shell_commands")
#: No amount added in one decision may be larger (as in the config: 2**53).
MAX_AMOUNT = 2**53


@dataclass(frozen=True, slots=True)
class Decision:
    """A person's decision about a paused task."""

    task_id: str
    action: DecisionAction
    tokens: int | None = None
    cost_usd: float | None = None
    time_s: float | None = None
    file_edits: int | None = None
    shell_commands: int | None = None
    source: str = "python"
    at: float = 0.0

    def amounts(self) -> dict[str, float]:
        return {k: v for k in ADDABLE if (v := getattr(self, k)) is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def validate_decision(d: Decision) -> None:
    """Raise :class:`DecisionError` for an unknown action, a useless add_budget, or an
    amount that is not a finite positive number (NaN stored as budget would fail the task
    again after every restart)."""
    if not isinstance(d.action, str) or d.action not in ACTIONS:
        raise DecisionError(f"unknown decision {str(d.action)[:40]!r}; "
                            f"choose one of {', '.join(ACTIONS)}")
    for name in ADDABLE:
        value = getattr(d, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DecisionError(f"{name} must be a number, got {type(value).__name__}")
        if not (math.isfinite(value) and 0 < value <= MAX_AMOUNT):
            raise DecisionError(f"{name} must be a positive amount, finite and <= {MAX_AMOUNT}, "
                                f"got {value!r}")
        if name in WHOLE and value != int(value):
            raise DecisionError(f"{name} must be a whole number, got {value!r}")
    if d.action == "add_budget" and not d.amounts():
        raise DecisionError("add_budget needs a positive amount (tokens, cost_usd, …)")


def from_store(value: dict[str, Any] | None) -> Decision | None:
    """A stored decision, checked; ``None`` if absent or invalid (one stored by an older
    version with a NaN amount must not fail the task at every restart)."""
    if not value:
        return None
    try:
        return checked(Decision.from_dict(value))
    except (DecisionError, TypeError, ValueError):
        return None


def checked(d: Decision) -> Decision:
    """``d`` validated (:func:`validate_decision`), with whole-unit amounts as ``int``
    (a JSON client may send ``5000.0`` tokens)."""
    validate_decision(d)

    def whole(value: float | None) -> int | None:
        return None if value is None else int(value)

    return replace(d, tokens=whole(d.tokens), file_edits=whole(d.file_edits),
                   shell_commands=whole(d.shell_commands))


async def submit_to_store(store: Store, decision: Decision) -> dict[str, Any]:
    """Store a decision for a paused task (no orchestrator running: picked up at resume).

    The decision is for the session the task is paused in (:func:`paused_session`) and is
    stored under ``<session>/<task>``; the first decision for a pause wins."""
    decision = checked(decision)
    session = await paused_session(store, decision.task_id)
    if session is None:
        known = bool(await store.events(task_id=decision.task_id))
        raise not_paused(decision.task_id, known, "the store has")
    if decision.action == "review":
        return {"accepted": True, "action": "review",
                "summary": await review_summary(store, decision.task_id, session)}
    key = task_key(session, decision.task_id)
    earlier = from_store(await store.get_state("decision", key))
    if earlier is not None:
        raise already_decided(decision.task_id, earlier, applied=False)
    await store.put_state("decision", key, decision.to_dict())
    return {"accepted": True, "action": decision.action, "stored": True, "session": session}


def not_paused(task_id: str, known: bool, where: str) -> DecisionError:
    """The reply to a decision for a task with no pause; one ``where`` has no trace of
    also says so (a mistyped id reads as such, not as a task that is running)."""
    if known:
        return DecisionError(f"task {task_id!r} is not paused")
    return DecisionError(f"task {task_id!r} is not paused: {where} no task of that name")


def already_decided(task_id: str, first: Decision, *, applied: bool) -> DecisionError:
    """The reply to a second decision for one pause: the first one wins."""
    state = "was applied" if applied else "is waiting to be applied"
    return DecisionError(f"task {task_id!r} already has a decision: {first.action} from "
                         f"{first.source} {state}; this decision was not taken")


def limits_added(scope: ScopeState, decision: Decision, dimension: str) -> dict[str, Any]:
    """What ``add_budget`` adds to ``scope``, paused on ``dimension``: only dimensions the
    scope limits (never cap an unlimited one)."""
    extra: dict[str, Any] = {}
    for name, amount in decision.amounts().items():
        if getattr(scope.limits, name) is not None:
            extra[name] = amount
    if decision.tokens and dimension.startswith("tokens:"):
        extra["tokens_by_model"] = {dimension[7:]: decision.tokens}
    if (decision.shell_commands and dimension == "dangerous_commands"
            and scope.limits.dangerous_commands is not None):
        # paused on the dangerous-command limit: the shell commands granted may be dangerous
        extra["dangerous_commands"] = decision.shell_commands
    return extra


def added_up(cumulative: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """What was added to a scope so far (``cumulative``) plus ``extra``."""
    total = dict(cumulative)
    for k, v in extra.items():
        if k == "tokens_by_model":
            merged = dict(total.get(k, {}))
            for m, n in v.items():
                merged[m] = merged.get(m, 0) + n
            total[k] = merged
        else:
            total[k] = total.get(k, 0) + v
    return total
