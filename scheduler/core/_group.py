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
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

E = TypeVar("E")
R = TypeVar("R")


class _Pending(Generic[E, R]):
    __slots__ = ("entry", "error", "lead", "result", "woken")

    def __init__(self, entry: E) -> None:
        self.entry = entry
        self.woken: Any = None  # only a write that waits needs one (see submit)
        self.lead = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[E, R]):
    """Leader/follower group commit of entries ``E`` whose writes answer ``R``."""

    def __init__(
        self, commit: Callable[[list[E]], Awaitable[list[R | Exception]]], *,
        max_batch: int = 256, gather: bool = False,
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._gather = gather
        self._queue: list[_Pending[E, R]] = []
        self._leading = False
        self._idle: anyio.Event | None = None  # set when the last commit under way ends
        #: Batches committed and writes in them so far (how much commits were shared).
        self.batches = 0
        self.writes = 0

    async def submit(self, entry: E) -> R:
        """Write ``entry``; return its outcome once its batch is committed."""
        op: _Pending[E, R] = _Pending(entry)
        self._queue.append(op)
        if not self._leading:
            self._leading = True
            op.lead = True
        else:
            # what the write parks on: a future of the running asyncio loop (one object,
            # no backend lookup -- ``anyio.Event()`` asks sniffio which library runs, per
            # write), else an :class:`anyio.Event`
            loop = asyncio._get_running_loop()  # None, not an exception, off asyncio
            woken: Any = anyio.Event() if loop is None else loop.create_future()
            op.woken = woken
            try:  # a future (asyncio), awaited as it is: every follower of a batch waits
                await (woken.wait() if loop is None else woken)
            except BaseException:
                if op in self._queue and not op.lead:
                    self._queue.remove(op)  # never written, never acknowledged
                elif op.lead:  # promoted as it was cancelled: the others wait on it
                    with anyio.CancelScope(shield=True):
                        await self._lead()
                raise
        if op.lead:
            with anyio.CancelScope(shield=True):
                await self._lead()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]  # set by the leader's commit

    async def wait_idle(self) -> None:
        """Return once no commit is under way (before closing the connection)."""
        while self._leading:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    async def _lead(self) -> None:
        if self._gather:
            await anyio.lowlevel.checkpoint()  # shielded by the caller: never cancelled
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        try:
            outcomes = await self._commit([op.entry for op in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"group commit: {len(outcomes)} outcomes for {len(batch)}")
            for op, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    op.error = outcome
                else:
                    op.result = outcome
        except Exception as exc:  # ``commit`` itself failed: so did every write of the batch
            for op in batch:
                op.error = exc
        except BaseException:
            for op in batch:
                op.error = RuntimeError("the group commit was interrupted")
            raise
        finally:
            self.batches += 1
            self.writes += len(batch)
            # the next leader first: it gathers and commits while this batch's callers
            # resume on the loop
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                if nxt.woken is not None:
                    _wake(nxt.woken)
            else:
                self._leading = False
                if self._idle is not None:
                    self._idle.set()
                    self._idle = None
            for op in batch:
                woken = op.woken
                if woken is None:
                    continue  # the leader's own write
                if isinstance(woken, asyncio.Future):  # inline: once per write
                    if not woken.done():  # a future its waiter's cancellation ended
                        woken.set_result(None)
                else:
                    woken.set()


def _wake(woken: Any) -> None:
    if isinstance(woken, anyio.Event):
        woken.set()
    elif not woken.done():  # a future its waiter's cancellation already ended
        woken.set_result(None)
