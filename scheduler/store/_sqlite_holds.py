"""Shared budget holds in the SQLite file: ``SqliteStore`` as a :class:`BudgetLedger`.

Several orchestrators (or ``serve`` replicas) on one host may share one SQLite file.
Each one's committed usage reaches the others through the ``totals`` tables, but a
call in flight is known only to its own process: without more, N processes could
each pass the same day limit with their calls in flight and spend N times it.  A
hold is the estimate of a call in flight, written where every process on the file
sees it, in the same write transaction that checks it:

    committed totals (every process) + live holds (every process) + this call <= limit

for every limited scope, or nothing is held (:class:`BudgetExceededError`).  The
write lock of ``BEGIN IMMEDIATE`` makes the check and the insert one step across
processes; the holds of one batch are checked one after the other, each seeing the
ones before it.  A hold ends in the transaction that records its call's event (the
event's ``hold_id``; see ``_sqlite_sql.apply``), or is released.  What a scope's live
holds add up to is kept per model in ``hold_sums`` by triggers on ``holds``: calls hold
from their admission while they queue for a provider lease, thousands at once, and a
check reads a few rows, not one per call in flight.

A hold whose process died must not block the budget: it stops counting once its
expiry (``hold_ttl_s`` after its grant or last renewal, epoch seconds from the wall
clock, which every process on the host shares) has passed, and at once when its
process (same host) is gone and none of its calls is left open (charged at their
estimate by a recovery round, ``scheduler.budget._open_calls``) -- checked only when a
hold is refused, so the usual call pays no system call for it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.core import BudgetExceededError, Totals, pid_runs
from scheduler.store._ledger import Hold, ScopeLimit
from scheduler.store._sqlite_sql import DELETE_HOLD, write_transaction
from scheduler.store._sqlite_totals import totals_of

#: What the live holds of a scope add up to: one row per model in ``hold_sums``, which
#: triggers keep equal to the ``holds`` rows' sums (a call reads a few rows, not one per
#: call in flight -- thousands while calls queue for their provider lease).
_HELD = ("SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(cost_usd), 0.0), "
         "COALESCE(SUM(CASE WHEN model = ? THEN tokens ELSE 0 END), 0) "
         "FROM hold_sums WHERE scope = ?")
_OPEN_CALL_OF = "SELECT 1 FROM open_calls WHERE host = ? AND pid = ? LIMIT 1"
# never OR REPLACE: the replaced row's delete would not reach the ``hold_sums`` trigger
_INSERT = "INSERT OR IGNORE INTO holds VALUES (?,?,?,?,?,?,?,?)"


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """One ``try_reserve`` waiting for its batch's transaction."""

    hold_id: str
    limits: tuple[ScopeLimit, ...]
    model: str
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Holder:
    """Who takes the holds of a store: its host and process, and the hold's lifetime."""

    host: str
    pid: int
    ttl_s: float
    #: Epoch seconds (the wall clock every process on the host shares).
    now: Callable[[], float]


async def unheld(hold: Hold) -> Hold:
    return hold


def held_id(hold: Hold) -> str:
    """The hold id an event ends ("" for a hold that wrote nothing: no limit to check)."""
    return hold.hold_id if hold.scopes else ""


def limited(limits: tuple[ScopeLimit, ...]) -> bool:
    """Whether any scope has a limit a hold is checked against (else nothing to hold)."""
    return any(lim.tokens is not None or lim.model_tokens is not None
               or lim.cost_usd is not None for lim in limits)


def reserve_all(db: sqlite3.Connection, requests: list[HoldRequest],
                holder: Holder) -> list[Hold | Exception]:
    """Check and hold each request in order, in ONE write transaction: a granted
    :class:`Hold` or the :class:`BudgetExceededError` of each."""
    now = holder.now()
    out: list[Hold | Exception] = []
    with write_transaction(db):
        db.execute("DELETE FROM holds WHERE expires_at <= ?", (now,))
        pruned = False
        # a batch writes holds only: each scope's committed totals are read once for it
        committed: dict[str, Totals] = {}
        for req in requests:
            result = _reserve_one(db, req, now + holder.ttl_s, holder, committed)
            if isinstance(result, BudgetExceededError) and not pruned:
                pruned = True  # once per batch: a hold of a killed process may be in the way
                if _prune_dead(db, holder):
                    result = _reserve_one(db, req, now + holder.ttl_s, holder, committed)
            out.append(result)
    return out


#: What a grant returns as the shared totals (see :func:`_reserve_one`): none.
_NO_TOTALS: dict[str, Totals] = {}


def _reserve_one(db: sqlite3.Connection, req: HoldRequest, expires: float, holder: Holder,
                 committed: dict[str, Totals]) -> Hold | BudgetExceededError:
    held: dict[str, tuple[int, float]] = {}
    for lim in req.limits:
        tot = committed.get(lim.scope)
        if tot is None:
            tot = committed[lim.scope] = totals_of(db, lim.scope)
        tokens_held, cost_held, model_held = db.execute(_HELD, (req.model, lim.scope)).fetchone()
        over = _over(lim, req, tot, (tokens_held, cost_held, model_held))
        if over is not None:
            return over
        held[lim.scope] = (tokens_held + req.tokens, cost_held + req.cost_usd)
    db.executemany(_INSERT, [
        (req.hold_id, lim.scope, req.model, req.tokens, req.cost_usd, expires, holder.host,
         holder.pid) for lim in req.limits])
    scopes = tuple(lim.scope for lim in req.limits)
    # no totals for the tracker to take over: its own charges, committed by this process
    # between this read and the hold's caller resuming, would be lost from (or counted
    # twice in) its scopes; the limits are enforced here, against every process's usage.
    # What was read goes back as ``fleet``: a floor for the alerts, never added to.
    return Hold(req.hold_id, scopes, req.model, req.tokens, req.cost_usd, _NO_TOTALS, held,
                fleet=committed)


def _over(lim: ScopeLimit, req: HoldRequest, tot: Totals,
          held: tuple[int, float, int]) -> BudgetExceededError | None:
    """The limit of ``lim`` the request would cross (as the Redis ledger checks them)."""
    tokens_held, cost_held, model_held = held
    if lim.tokens is not None and req.tokens > 0:
        used = tot.tokens + tokens_held
        if used + req.tokens > lim.tokens:
            return BudgetExceededError(lim.scope, "tokens", used, lim.tokens, req.tokens,
                                       held=tokens_held, shared=True)
    if lim.model_tokens is not None and req.model and req.tokens > 0:
        used = tot.tokens_by_model.get(req.model, 0) + model_held
        if used + req.tokens > lim.model_tokens:
            return BudgetExceededError(lim.scope, f"tokens:{req.model}", used,
                                       lim.model_tokens, req.tokens, held=model_held,
                                       shared=True)
    if lim.cost_usd is not None and req.cost_usd > 0:
        cost = tot.cost_usd + cost_held
        if cost + req.cost_usd > lim.cost_usd:
            return BudgetExceededError(lim.scope, "cost_usd", cost, lim.cost_usd,
                                       req.cost_usd, held=cost_held, shared=True)
    return None


def _prune_dead(db: sqlite3.Connection, holder: Holder) -> bool:
    """Delete the holds of processes of this host that are gone; whether any were.  Not
    those of a process with calls left open: they may have been paid, and count until a
    recovery round charges them at their estimate (deleting their records) -- freed
    before, their budget would be spent again and the estimate put on top of it."""
    pids = [pid for (pid,) in db.execute(
        "SELECT DISTINCT pid FROM holds WHERE host = ? AND pid != ?",
        (holder.host, holder.pid))]
    dead = [(holder.host, pid) for pid in pids if not pid_runs(pid) and db.execute(
        _OPEN_CALL_OF, (holder.host, pid)).fetchone() is None]
    if dead:
        db.executemany("DELETE FROM holds WHERE host = ? AND pid = ?", dead)
    return bool(dead)


def renew(db: sqlite3.Connection, hold_id: str, holder: Holder) -> bool:
    """Push ``hold_id``'s expiry out by the TTL; ``False`` when it had expired or ended."""
    now = holder.now()
    return db.execute(
        "UPDATE holds SET expires_at = ? WHERE hold_id = ? AND expires_at > ?",
        (now + holder.ttl_s, hold_id, now)).rowcount > 0


def release(db: sqlite3.Connection, hold_id: str) -> None:
    db.execute(DELETE_HOLD, (hold_id,))
