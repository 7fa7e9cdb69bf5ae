"""Group commit: concurrent writes share one transaction, each acknowledged once committed.

A write is queued and its caller waits.  The first caller that finds no commit
under way becomes the *leader*: it takes the queue (up to ``max_batch`` writes,
its own first), hands the batch to ``commit`` — one transaction — and then wakes
every caller of the batch with its own outcome.  Writes queued meanwhile form
the next batch, led by the first of them.  So a lone writer pays one commit per
write, and N concurrent writers share roughly one commit between them, with no
background task to start or stop.  With ``gather`` the leader first lets the
event loop finish its turn, so the writes other tasks make in that same turn
join its batch: a ``commit`` that never yields (a store committing on the loop's
thread) would otherwise find no write queued behind it, ever.

``commit`` returns one outcome per write, in order: a value, or the exception
that write alone failed with; an exception raised by ``commit`` itself fails
every write of the batch.  A commit is never cancelled half-way (the other
callers wait on it); a caller cancelled while its write is still queued takes
the write out of the queue — it is then neither written nor acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from scheduler.core._cancel import shield

E = TypeVar("E")
R = TypeVar("R")

#: What wakes a queued write's caller to lead the next batch (its future's result).
_LEAD: Any = object()


class _Parked:
    """A waiting write's caller off asyncio: what a loop future is on asyncio (its
    outcome, set once), parked on an :class:`anyio.Event`."""

    __slots__ = ("_error", "_event", "_result")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, result: Any) -> None:
        self._result = result
        self._event.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    async def wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._result


class GroupCommit(Generic[E, R]):
    """Leader/follower group commit of entries ``E`` whose writes answer ``R``."""

    def __init__(
        self, commit: Callable[[list[E]], Awaitable[list[R | Exception]]], *,
        max_batch: int = 256, gather: bool = False,
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._gather = gather
        # the queue: each write's entry and what its caller waits on (None: the leader's
        # own write; a loop future on asyncio, its outcome its result; else a _Parked)
        self._entries: list[E] = []
        self._waiters: list[Any] = []
        self._leading = False
        #: The waiter woken to lead the next batch: its caller leads even if cancelled.
        self._promoted: Any = None
        self._loop: Any = None
        self._new_future: Callable[[], Any] = _Parked
        self._idle: anyio.Event | None = None  # set when the last commit under way ends
        #: Batches committed and writes in them so far (how much commits were shared).
        self.batches = 0
        self.writes = 0

    async def submit(self, entry: E) -> R:
        """Write ``entry``; return its outcome once its batch is committed."""
        self._entries.append(entry)
        if not self._leading:
            self._leading = True
            self._waiters.append(None)
            with shield():
                return await self._lead()  # type: ignore[no-any-return]
        loop = asyncio._get_running_loop()  # None, not an exception, off asyncio
        if loop is not None:
            if loop is not self._loop:
                self._bind(loop)
            waiter = self._new_future()
        else:
            waiter = _Parked()
        self._waiters.append(waiter)
        try:  # a future (asyncio), awaited as it is: every follower of a batch waits
            outcome = await (waiter if loop is not None else waiter.wait())
        except BaseException:
            if self._promoted is waiter:  # woken to lead as it was cancelled: others wait
                self._promoted = None
                with shield():
                    await self._lead()
            else:
                self._withdraw(waiter)  # still queued: never written, never acknowledged
                if loop is not None and waiter.done() and not waiter.cancelled():
                    waiter.exception()  # an outcome never read: not logged as lost
            raise
        if outcome is _LEAD:
            self._promoted = None
            with shield():
                return await self._lead()  # type: ignore[no-any-return]
        return outcome  # type: ignore[no-any-return]

    def _bind(self, loop: Any) -> None:
        """Make the running loop's futures (asyncio's stock ones without the Python frame
        of ``create_future``, as the allocator does)."""
        self._loop = loop
        stock = getattr(type(loop).create_future, "__qualname__", "")
        self._new_future = (partial(asyncio.Future, loop=loop)
                            if stock == "BaseEventLoop.create_future" else loop.create_future)

    def _withdraw(self, waiter: Any) -> None:
        """A caller cancelled while its write is still queued takes it out of the queue."""
        for i, queued in enumerate(self._waiters):
            if queued is waiter:
                del self._waiters[i], self._entries[i]
                return

    async def wait_idle(self) -> None:
        """Return once no commit is under way (before closing the connection)."""
        while self._leading:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    async def _lead(self) -> Any:
        """Commit the batch at the front of the queue, the leader's own write first; its
        outcome (or raise its error) once every other write's caller has its own."""
        if self._gather:
            await anyio.lowlevel.checkpoint()  # shielded by the caller: never cancelled
        n = self._max_batch
        entries, waiters = self._entries[:n], self._waiters[:n]
        del self._entries[:n], self._waiters[:n]
        outcomes: list[Any]
        try:
            outcomes = await self._commit(entries)
            if len(outcomes) != len(entries):
                raise RuntimeError(f"group commit: {len(outcomes)} outcomes for {len(entries)}")
        except Exception as exc:  # ``commit`` itself failed: so did every write of the batch
            outcomes = [exc] * len(entries)
        except BaseException:
            self._end_batch(waiters, [RuntimeError("the group commit was interrupted")]
                            * len(entries))
            raise
        self._end_batch(waiters, outcomes)
        own = outcomes[0]
        if isinstance(own, Exception):
            raise own
        return own

    def _end_batch(self, waiters: list[Any], outcomes: list[Any]) -> None:
        """Count the batch, wake the next leader, then hand each caller its outcome."""
        self.batches += 1
        self.writes += len(waiters)
        # the next leader first: it gathers and commits while this batch's callers
        # resume on the loop
        if self._waiters:
            nxt = self._promoted = self._waiters[0]
            if not nxt.done():  # a future its waiter's cancellation already ended
                nxt.set_result(_LEAD)
        else:
            self._leading = False
            if self._idle is not None:
                self._idle.set()
                self._idle = None
        for waiter, outcome in zip(waiters, outcomes, strict=True):
            if waiter is None:  # the leader's own
                continue
            try:
                if isinstance(outcome, Exception):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
            except asyncio.InvalidStateError:  # a future its caller's cancellation ended
                pass
