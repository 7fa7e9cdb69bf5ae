"""Calls in flight, recorded durably so a crash cannot hide what they may have cost (R1.5).

Before a model call goes out, its reservation is written to the store as an
``open_call`` state record: the event id its charge will use, the estimate
(prompt and output tokens, cost) and the process that made it.  Settling the
call records its usage and deletes the record; releasing it (the call failed
unpaid, or was cancelled) deletes it too.

A process killed mid-call leaves its records behind.  When a tracker opens, and
every minute while an orchestrator runs (``Tracker.recover_open_calls``: other
replicas on the store keep running), each record left by a process that is gone
is charged at its estimate — unless the call's own usage made it to the store
before the kill — under the event id ``<id>:estimate``, and kept as an
``estimated_charge`` state record that ``status`` and ``report`` show.  So the
budget never counts less than what may have been spent.  That charge is one step in
the store (``store.charge_open_call``: not if the record is gone, the call settled), so
two processes recovering at once charge a call once.  A process taken for dead may
only have been frozen (SIGSTOP, a paused VM, a long GC): when its call then settles,
its record is gone, and the store records the actual usage *in place of* the estimate
in the same step (``store.record_and_delete_state``: the estimate's event, amounts and
``estimated_charge`` record go), so the call counts once, by what it cost.

A process is gone when, on this host, its pid no longer runs (or it had this
process's pid -- a restarted container's pid 1 -- in a run that is not alive here),
or when its *beat* stopped: every tracker keeps a ``process`` state record whose
counter it bumps each recovery round, and a tracker that sees a record's counter
unchanged for :data:`BEAT_STALE_S` of its own clock takes that process for dead,
wherever it ran -- a replica on another host or in another pod, whose pid says
nothing here.  Only counters are compared, never two machines' clocks.  A record
with no beat (a writer without beats, or one whose beat was lost) is left alone:
charging a live call at its estimate would count it twice.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from scheduler.core import StoreError, Usage, UsageEvent, WallClock, get_logger
from scheduler.store import Store
from scheduler.store._base import ESTIMATED_CHARGE, OPEN_CALL, charge_open_call

_log = get_logger("vibe_engine.budget")
OPEN = OPEN_CALL
ESTIMATED = ESTIMATED_CHARGE
#: The state kind of a process's beat (see the module docstring).
BEAT = "process"
#: A beat unchanged for this long (the observer's clock) marks its process dead: three
#: rounds of ``scheduler.runtime._recovery.RECOVER_EVERY_S`` missed.
BEAT_STALE_S = 180.0
#: How many of the estimates it charged a tracker remembers (see ``OpenCalls.replaced``).
_CHARGED_KEPT = 4096
#: What is told of an estimate as soon as it is charged, with its scopes' versions.
Charged = Callable[[UsageEvent, tuple[int, ...]], Awaitable[None]]
#: The runs of the trackers alive in this process: a record of this pid from any other
#: run was left by an earlier process that had the same pid.
_LIVE_RUNS: set[str] = set()


@dataclass(frozen=True, slots=True)
class OpenCall:
    """What an open call's record holds (its estimate and who made it)."""

    event_id: str
    task_id: str
    session_id: str
    day: str
    agent: str
    task_type: str
    model: str
    prompt_tokens: int
    output_tokens: int
    cost_usd: float
    host: str
    pid: int
    run: str
    #: The task whose per-day budget the call counts toward ("" for none).
    day_scope: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpenCall:
        # a field added later (``day_scope``) has a default: records written before it read
        return cls(**{f: d[f] for f in cls.__dataclass_fields__ if f in d})

    def estimate_event(self, at: float) -> UsageEvent:
        return UsageEvent(
            event_id=f"{self.event_id}:estimate", task_id=self.task_id,
            session_id=self.session_id, day=self.day, at=at, agent=self.agent,
            model=self.model, usage=Usage(self.prompt_tokens, self.output_tokens),
            cost_usd=self.cost_usd, task_type=self.task_type, day_scope=self.day_scope,
        )


class OpenCalls:
    """Writes, closes and recovers the ``open_call`` records of one tracker."""

    def __init__(self, store: Store, *, run: str, wall: WallClock,
                 clock: Callable[[], float]) -> None:
        self._store = store
        self._run = run
        self._wall = wall
        self._clock = clock
        self._host = socket.gethostname()  # a system call: once, not per call
        self._pid = os.getpid()
        self._beats = 0
        #: Other processes' beats as last read: key -> (counter, when first read so).
        self._seen: dict[str, tuple[Any, float]] = {}
        #: The estimates this tracker charged, by call: a process only frozen may yet
        #: settle the call and replace one (see :meth:`replaced`).
        self._charged: dict[str, UsageEvent] = {}
        _LIVE_RUNS.add(run)

    @property
    def beat_key(self) -> str:
        return _beat_key(self._host, self._pid, self._run)

    async def beat(self) -> None:
        """Bump this process's beat: it is alive (see the module docstring)."""
        self._beats += 1
        await self._store.put_state(BEAT, self.beat_key, {
            "host": self._host, "pid": self._pid, "run": self._run, "beat": self._beats})

    async def end(self) -> None:
        """This tracker is closing: its beat goes (its calls were settled or released)."""
        _LIVE_RUNS.discard(self._run)
        await self._store.delete_state(BEAT, self.beat_key)

    async def _stale(self) -> set[str]:
        """The keys of the beats that stayed unchanged for :data:`BEAT_STALE_S`."""
        now, stale, seen = self._clock(), set(), {}
        for key, record in (await self._store.list_state(BEAT)).items():
            if key == self.beat_key:
                continue
            count, since = self._seen.get(key, (None, now))
            if count != record.get("beat"):
                count, since = record.get("beat"), now
            seen[key] = (count, since)
            if now - since >= BEAT_STALE_S:
                stale.add(key)
        self._seen = seen
        return stale

    def open(self, event_id: str, task_id: str, session_id: str, day: str, agent: str,
             task_type: str, model: str, prompt_tokens: int, output_tokens: int,
             cost_usd: float, day_scope: str) -> Awaitable[None]:
        """Write the record of a call about to go out (the :class:`OpenCall` fields, with
        this process's): the store's write itself, no coroutine of its own per call.  A
        plain dict, what the store keeps, its keys in the order of the fields (SQLite takes
        its values as a row as they are): a frozen record made and taken apart again per
        call cost more than the rest of writing it."""
        return self._store.put_state(OPEN, event_id, {
            "event_id": event_id, "task_id": task_id, "session_id": session_id, "day": day,
            "agent": agent, "task_type": task_type, "model": model,
            "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "cost_usd": cost_usd, "host": self._host, "pid": self._pid,
            "run": self._run, "day_scope": day_scope,
        })

    async def close(self, event_id: str) -> None:
        await self._store.delete_state(OPEN, event_id)

    @staticmethod
    def key(event_id: str) -> tuple[str, str]:
        """The (kind, key) of the record of the call whose event is ``event_id``."""
        return OPEN, event_id

    async def recover(self, charged_now: Charged | None = None,
                      ) -> list[tuple[UsageEvent, tuple[int, ...]]]:
        """Charge, at its estimate, every call a process that is gone left open; then
        forget the beats of the processes found dead.  Returns each charge with the
        versions its scopes reached, when the store tells them (``store.Recorded``).
        ``charged_now`` is awaited with each as soon as it is charged: a read of the
        totals made after the charge then holds it, one made before does not."""
        stale = await self._stale()
        charged: list[tuple[UsageEvent, tuple[int, ...]]] = []
        for key, record in (await self._store.list_state(OPEN)).items():
            try:
                call = OpenCall.from_dict(record)
            except (KeyError, TypeError):
                _log.warning("open_call_unreadable", key=key)
                continue
            if not _gone(call, stale):
                continue  # still running (here or elsewhere): it settles itself
            event = call.estimate_event(self._wall.now().timestamp())
            try:  # one step: not if the call settled meanwhile (its process was only frozen)
                added = await charge_open_call(self._store, event, key, {
                    **call.to_dict(), "tokens": event.usage.total_tokens,
                    "charged_event_id": event.event_id})
            except StoreError as exc:  # locked or unreachable: the next round charges it
                _log.warning("open_call_not_charged_yet", key=key, error=str(exc))
                stale.discard(_beat_key(call.host, call.pid, call.run))  # its beat kept
                continue
            if added:
                charged.append((event, added if isinstance(added, tuple) else ()))
                if charged_now is not None:
                    await charged_now(*charged[-1])
                self._charged[key] = event
                _log.warning("open_call_charged_at_estimate", task_id=call.task_id,
                             session_id=call.session_id, tokens=event.usage.total_tokens,
                             cost_usd=round(call.cost_usd, 6))
        for key in stale:  # its calls were charged above
            await self._store.delete_state(BEAT, key)
            self._seen.pop(key, None)
        while len(self._charged) > _CHARGED_KEPT:  # the oldest: their processes are gone
            del self._charged[next(iter(self._charged))]
        return charged

    async def replaced(self) -> list[UsageEvent]:
        """The estimates this tracker charged whose call settled since, its process woken:
        the settle replaced each (its ``estimated_charge`` record is gone)."""
        if not self._charged:
            return []
        marks = await self._store.list_state(ESTIMATED)
        return [self._charged.pop(key) for key in list(self._charged) if key not in marks]


def _beat_key(host: str, pid: int, run: str) -> str:
    return f"{host}:{pid}:{run}"


def _gone(call: OpenCall, stale: set[str]) -> bool:
    """True when the process that made ``call`` is known to have ended: its beat
    stopped, or (this host) its pid is not running or is this process's in a run not
    alive here."""
    if _beat_key(call.host, call.pid, call.run) in stale:
        return True
    if call.host != socket.gethostname():
        return False  # another host: only its beat can tell
    if call.pid == os.getpid():
        return call.run not in _LIVE_RUNS  # an earlier process with this pid
    try:
        os.kill(call.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False

