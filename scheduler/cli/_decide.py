"""``vibe-engine decide`` and the budget lines of ``vibe-engine status`` (R3.4).

:func:`decide` sends a decision to the running orchestrator over its control
socket; when none is running it writes the decision to the store, and the
next orchestrator applies it when it starts.  The lead's typer CLI mounts
these functions; they print nothing themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import anyio

from scheduler.budget import ScopeState
from scheduler.cli._checks import existing_state
from scheduler.config import AlertsConfig, Limits
from scheduler.control import Decision
from scheduler.control._alerts import StatusRow, scope_rows
from scheduler.control._decision import DecisionAction, submit_to_store, validate_decision
from scheduler.control._server import control_paths, send_request
from scheduler.core import DecisionError, Totals, VibeEngineError
from scheduler.store import Store, open_store, session_task_totals, task_key

#: The agent every serve key's task runs as starts so (``scheduler.serve``'s ``agent_name``;
#: not imported, so ``status`` does not load the HTTP stack).
SERVE_AGENT_PREFIX = "serve:"
_ACTION_ALIASES = {"add": "add_budget", "add-budget": "add_budget", "continue": "add_budget",
                   "save": "finish", "stop": "finish"}


def normalize_action(action: str) -> str:
    """Accept ``add``/``add-budget``/``continue`` and ``save``/``stop`` as aliases."""
    return _ACTION_ALIASES.get(action, action)


async def decide_async(
    task_id: str, action: str, *, tokens: int | None = None, cost: float | None = None,
    time_s: float | None = None, file_edits: int | None = None,
    shell_commands: int | None = None, state_dir: Path = Path(".vibe-engine"),
    store: str = "sqlite",
) -> dict[str, Any]:
    """Decide about a paused task: via the running orchestrator, else via the store.

    Returns the reply: ``{"accepted": True, "action": …, "via": "socket"|"store"}``
    plus ``summary`` for ``review``.  Raises :class:`DecisionError` when refused.
    """
    action = normalize_action(action)
    decision = Decision(task_id, cast(DecisionAction, action), tokens, cost, time_s,
                        file_edits, shell_commands, source="cli")
    validate_decision(decision)
    state_dir = Path(state_dir)
    request = {"op": "decide", "task_id": task_id, "action": action, "tokens": tokens,
               "cost_usd": cost, "time_s": time_s, "file_edits": file_edits,
               "shell_commands": shell_commands}
    reply = await _via_socket(state_dir, request)
    if reply is not None:
        return reply
    try:
        existing_state(state_dir, store)
    except VibeEngineError as exc:
        raise DecisionError(f"no orchestrator is listening, and {exc}") from None
    backend = open_store(store, state_dir)
    await backend.open()
    try:
        result = await submit_to_store(backend, decision)
    finally:
        await backend.aclose()
    return {**result, "via": "store"}


async def _via_socket(state_dir: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The running orchestrator's reply, or ``None`` when none is listening (no socket, or
    a stale one).  A socket or token this user may not open is a DecisionError, not a
    fallback to the store: the orchestrator that owns them is someone else's."""
    path = control_paths(state_dir).socket
    try:
        if not path.exists():
            return None
        reply = await send_request(state_dir, request)
    except (FileNotFoundError, ConnectionRefusedError):
        return None  # a stale socket: nobody is listening
    except PermissionError as exc:
        raise DecisionError(f"cannot open the control channel of {state_dir}: "
                            f"{exc.strerror} (is the orchestrator run by another user?)") from None
    except (OSError, ValueError) as exc:
        raise DecisionError(f"control channel of {state_dir} failed: {exc}") from None
    if not reply.get("ok"):
        raise DecisionError(str(reply.get("error", "refused")))
    return {**reply["result"], "via": "socket"}


def decide(
    task_id: str, action: str, *, tokens: int | None = None, cost: float | None = None,
    time_s: float | None = None, file_edits: int | None = None,
    shell_commands: int | None = None, state_dir: Path = Path(".vibe-engine"),
    store: str = "sqlite",
) -> dict[str, Any]:
    """Synchronous :func:`decide_async` for the CLI (runs its own event loop)."""

    async def run() -> dict[str, Any]:
        return await decide_async(
            task_id, action, tokens=tokens, cost=cost, time_s=time_s, file_edits=file_edits,
            shell_commands=shell_commands, state_dir=state_dir, store=store,
        )

    return anyio.run(run)


async def stored_status_rows(
    store: Store, state_dir: Path, thresholds: AlertsConfig | None = None,
) -> list[StatusRow]:
    """Budget rows of every task with a ``usage.json`` under ``state_dir`` (no orchestrator).

    Limits come from the task's ``usage.json`` (including budget people added),
    usage from what the store recorded for the task in the file's session,
    ``paused`` from that session's pending pause records.
    """
    thresholds = thresholds or AlertsConfig()
    paused = set(await store.list_state("pause"))
    rows: list[StatusRow] = []
    tasks_dir = anyio.Path(state_dir) / "tasks"
    if not await tasks_dir.is_dir():
        return rows
    # a serve key's grouped task KEY/NAME keeps its file one folder down
    found: list[anyio.Path] = []
    for pattern in ("*/usage.json", "*/*/usage.json"):
        found += [p async for p in tasks_dir.glob(pattern)]
    docs = sorted(found)
    for path in docs:
        try:
            doc = json.loads(await path.read_text(encoding="utf-8"))
            limits = Limits.model_validate(doc.get("budget", {}))
        except (OSError, ValueError, AttributeError):  # damaged: not even an object
            continue
        task_id = str(doc.get("task_id", path.parent.name))
        session = str(doc.get("session_id", ""))
        scope = ScopeState(f"task:{task_id}", limits,
                           totals=await _task_totals(store, doc, session, task_id))
        rows.extend(scope_rows(scope, task_id, thresholds,
                               paused=task_key(session, task_id) in paused))
        rows.extend(await _day_rows(store, doc, task_id, thresholds))
    return rows


async def _task_totals(store: Store, doc: dict[str, Any], session: str,
                       task_id: str) -> Totals:
    """What the task's budget counts: a serve key's (and its grouped tasks') spans every
    session on the store, so a restarted serve's row shows what the key has left; any
    other task's counts its session."""
    if str(doc.get("agent", "")).startswith(SERVE_AGENT_PREFIX):
        return await store.totals(f"task:{task_id}")
    return await session_task_totals(store, session, task_id)


async def _day_rows(store: Store, doc: dict[str, Any], task_id: str,
                    thresholds: AlertsConfig) -> list[StatusRow]:
    """Rows of the per-day budget a task's file names (a serve key's ``day_budget``)."""
    day: Any = doc.get("day_budget")
    if not isinstance(day, dict):
        return []
    try:
        name = str(day["scope"])
        limits = Limits.model_validate(day["budget"])
    except (TypeError, KeyError, ValueError):
        return []  # none, or unreadable: the task's own rows stand
    scope = ScopeState(name, limits, totals=await store.totals(name))
    return scope_rows(scope, task_id, thresholds)


def format_status_row(row: StatusRow) -> str:
    """One plain-text line: ``task  dimension  used/limit  pct  LEVEL [paused]``."""
    used = f"{row.used:.4f}" if row.dimension == "cost_usd" else f"{row.used:,.0f}"
    limit = f"{row.limit:.4f}" if row.dimension == "cost_usd" else f"{row.limit:,.0f}"
    paused = " paused" if row.paused else ""
    return (f"{row.task_id:<20} {row.dimension:<16} {used:>12}/{limit:<12} "
            f"{row.fraction * 100:5.1f}% {row.level.upper()}{paused}")


def _amount(dimension: str, value: Any) -> str:
    if dimension in ("cost_usd", "cost"):
        return f"${float(value):.4f}"
    if dimension == "time_s":
        return f"{float(value):,.0f} s"
    return f"{float(value):,.0f}"


def format_review(summary: dict[str, Any], options: str = "") -> str:
    """``decide … review`` for people: why the task paused, what it used, what was added,
    its overdrafts and checkpoint, and the commands that answer it (with ``options``,
    e.g. ``--state-dir X``, added to them)."""
    task, usage = summary.get("task_id", "?"), summary.get("usage") or {}
    pause = summary.get("pause") or {}
    lines = [f"Task {task} (session {summary.get('session_id') or '?'})"]
    if pause:
        dim, reason = str(pause.get("dimension") or ""), str(pause.get("reason", "?"))
        if dim and dim not in reason:  # the reason usually names the dimension already
            reason += (f" ({dim} {_amount(dim, pause.get('used', 0))} of "
                       f"{_amount(dim, pause.get('limit', 0))})")
        lines.append(f"  paused:     {reason}")
    lines.append(f"  used:       {int(usage.get('tokens', 0)):,} tokens, "
                 f"${float(usage.get('cost_usd', 0.0)):.4f}, {usage.get('calls', 0)} calls, "
                 f"{usage.get('file_edits', 0)} file edits, "
                 f"{usage.get('shell_commands', 0)} shell commands")
    by_model = usage.get("tokens_by_model") or {}
    if by_model:
        lines.append("  by model:   " + ", ".join(f"{m} {int(n):,}"
                                                  for m, n in sorted(by_model.items())))
    for scope, extra in sorted(((summary.get("budget_added") or {}).get("scopes") or {}).items()):
        added = ", ".join(f"{_amount(k, v)} {k}" for k, v in sorted(extra.items())
                          if k != "tokens_by_model")
        lines.append(f"  added:      {added} to {scope}")
    for od in summary.get("overdrafts") or ():
        lines.append(f"  overdraft:  {int(od.get('tokens', 0)):,} tokens, "
                     f"${float(od.get('cost_usd', 0.0)):.4f} on {od.get('scope', '?')} "
                     f"({int(od.get('repaid_tokens', 0)):,} tokens repaid)")
    checkpoint = summary.get("checkpoint")
    if checkpoint:
        keys = ", ".join(sorted(str(k) for k in checkpoint)[:8])
        lines.append(f"  checkpoint: saved ({keys})")
    else:
        lines.append("  checkpoint: none (a continued attempt starts over)")
    lines += ["Answer with one of:",
              f"  vibe-engine decide {task} add --tokens N{options}   (or --cost, --time-s …)",
              f"  vibe-engine decide {task} finish{options}"]
    return "\n".join(lines)
