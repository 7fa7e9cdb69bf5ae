"""Named resource locks (files and arbitrary names) whose waits feed the wait-for graph.

A :class:`LockManager` grants each named resource to *holders* (task ids) in
shared or exclusive mode.  Waiters queue first come, first served; a waiter
is granted when its mode is compatible with the current holders and with
every waiter queued ahead of it (so a writer is never starved by readers).

While a holder waits, the manager keeps the edges ``waiter → blocker`` in the
:class:`~scheduler.deadlock._graph.WaitForGraph` up to date (R5.6): the blockers
are the incompatible holders plus the incompatible waiters queued ahead.
The edges disappear as soon as the wait ends, whether by grant, by
cancellation or by :meth:`LockManager.release_all`.  A cancelled waiter
leaves no edge and no lock, even when the grant raced with the cancellation.

Locks are re-entrant per holder: taking a name the holder already holds in
a mode it already has (or exclusive covering shared) only counts.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from scheduler.core import WouldBlockError, get_logger
from scheduler.deadlock._graph import WaitForGraph

_log = get_logger("vibe_engine.locks")
_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class LockToken:
    """One granted acquisition; hand it back to :meth:`LockManager.release`."""

    holder: str
    name: str
    exclusive: bool
    released: bool = False


@dataclass(eq=False, slots=True)
class _Waiter:
    holder: str
    exclusive: bool
    event: anyio.Event = field(default_factory=anyio.Event)
    token: LockToken | None = None
    blockers: frozenset[str] = frozenset()
    key: str = field(default_factory=lambda: f"lock-wait-{next(_ids)}")


@dataclass(slots=True)
class _Resource:
    #: holder -> list of live tokens (re-entrant acquisitions)
    holders: dict[str, list[LockToken]] = field(default_factory=dict)
    queue: deque[_Waiter] = field(default_factory=deque)

    def exclusive_holder(self) -> str | None:
        for holder, tokens in self.holders.items():
            if any(t.exclusive for t in tokens):
                return holder
        return None


@dataclass(frozen=True, slots=True)
class LockStatistics:
    """What :meth:`LockManager.statistics` reports."""

    resources_held: int
    holders: int
    waiters: int
    grants: int
    cancelled_waits: int


class LockManager:
    """Shared/exclusive locks on named resources, taken by holder id."""

    def __init__(self, graph: WaitForGraph | None = None) -> None:
        self.graph = graph if graph is not None else WaitForGraph()
        self._resources: dict[str, _Resource] = {}
        self._held: dict[str, set[str]] = {}  # holder -> names it holds
        self._grants = 0
        self._cancelled = 0

    # -- inspection --------------------------------------------------------------------

    def held_by(self, holder: str) -> list[str]:
        """Names ``holder`` currently holds (sorted)."""
        return sorted(self._held.get(holder, ()))

    def holders_of(self, name: str) -> list[str]:
        res = self._resources.get(name)
        return sorted(res.holders) if res else []

    def statistics(self) -> LockStatistics:
        held = [r for r in self._resources.values() if r.holders]
        return LockStatistics(
            resources_held=len(held),
            holders=len(self._held),
            waiters=sum(len(r.queue) for r in self._resources.values()),
            grants=self._grants,
            cancelled_waits=self._cancelled,
        )

    # -- acquire / release -------------------------------------------------------------

    def acquire_nowait(self, holder: str, name: str, *, exclusive: bool = True) -> LockToken:
        """Take ``name`` now or raise :class:`WouldBlockError`."""
        res = self._resources.setdefault(name, _Resource())
        if res.queue or not self._grantable(res, holder, exclusive):
            if self._covered(res, holder, exclusive):
                return self._grant(res, holder, name, exclusive)
            self._forget_if_idle(name)
            raise WouldBlockError(f"{name} is held by {', '.join(sorted(res.holders))}")
        return self._grant(res, holder, name, exclusive)

    async def acquire(self, holder: str, name: str, *, exclusive: bool = True) -> LockToken:
        """Wait until ``holder`` may take ``name``; every wait is a wait-for edge (R5.6)."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        res = self._resources.setdefault(name, _Resource())
        if self._covered(res, holder, exclusive) or (
            not res.queue and self._grantable(res, holder, exclusive)
        ):
            return self._grant(res, holder, name, exclusive)
        waiter = _Waiter(holder, exclusive)
        res.queue.append(waiter)
        self._update_edges(res)
        try:
            await waiter.event.wait()
        except BaseException:
            self._abandon(res, name, waiter)
            raise
        assert waiter.token is not None
        return waiter.token

    def release(self, token: LockToken) -> None:
        """Give back one acquisition; releasing twice is a no-op."""
        if token.released:
            return
        token.released = True
        res = self._resources.get(token.name)
        if res is None:
            return
        tokens = res.holders.get(token.holder, [])
        if token in tokens:
            tokens.remove(token)
        if not tokens:
            res.holders.pop(token.holder, None)
            names = self._held.get(token.holder)
            if names is not None:
                names.discard(token.name)
                if not names:
                    del self._held[token.holder]
        self._pump(res, token.name)

    def release_all(self, holder: str) -> list[str]:
        """Release every lock ``holder`` holds; returns the names released (sorted)."""
        names = self.held_by(holder)
        for name in names:
            res = self._resources[name]
            for token in list(res.holders.get(holder, [])):
                self.release(token)
        if names:
            _log.debug("locks_released", holder=holder, names=names)
        return names

    @asynccontextmanager
    async def open_lock(
        self, holder: str, name: str, *, exclusive: bool = True
    ) -> AsyncIterator[LockToken]:
        """Hold ``name`` for the body of the ``async with``."""
        token = await self.acquire(holder, name, exclusive=exclusive)
        try:
            yield token
        finally:
            self.release(token)

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _conflicts(holder: str, exclusive: bool, other: str, other_exclusive: bool) -> bool:
        return other != holder and (exclusive or other_exclusive)

    def _blockers(self, res: _Resource, waiter: _Waiter, ahead: list[_Waiter]) -> set[str]:
        out = {
            h for h, tokens in res.holders.items()
            if self._conflicts(waiter.holder, waiter.exclusive, h,
                               any(t.exclusive for t in tokens))
        }
        out.update(
            w.holder for w in ahead
            if self._conflicts(waiter.holder, waiter.exclusive, w.holder, w.exclusive)
        )
        return out

    def _grantable(self, res: _Resource, holder: str, exclusive: bool) -> bool:
        """Compatible with the holders, ignoring the queue (callers check it)."""
        if self._covered(res, holder, exclusive):
            return True
        return not self._blockers(res, _Waiter(holder, exclusive), [])

    @staticmethod
    def _covered(res: _Resource, holder: str, exclusive: bool) -> bool:
        mine = res.holders.get(holder)
        return bool(mine) and (not exclusive or any(t.exclusive for t in mine or ()))

    def _grant(self, res: _Resource, holder: str, name: str, exclusive: bool) -> LockToken:
        token = LockToken(holder, name, exclusive)
        res.holders.setdefault(holder, []).append(token)
        self._held.setdefault(holder, set()).add(name)
        self._grants += 1
        return token

    def _pump(self, res: _Resource, name: str) -> None:
        """Grant queued waiters in order while they are compatible; refresh edges."""
        while res.queue:
            head = res.queue[0]
            if self._blockers(res, head, []):
                break
            res.queue.popleft()
            head.token = self._grant(res, head.holder, name, head.exclusive)
            self._set_edges(head, frozenset())
            head.event.set()
        self._update_edges(res)
        self._forget_if_idle(name)

    def _update_edges(self, res: _Resource) -> None:
        ahead: list[_Waiter] = []
        for waiter in res.queue:
            self._set_edges(waiter, frozenset(self._blockers(res, waiter, ahead)))
            ahead.append(waiter)

    def _set_edges(self, waiter: _Waiter, blockers: frozenset[str]) -> None:
        if blockers != waiter.blockers:
            self.graph.set_waits(waiter.key, waiter.holder, blockers)
            waiter.blockers = blockers

    def _abandon(self, res: _Resource, name: str, waiter: _Waiter) -> None:
        """A wait ended without the caller taking the lock: leave no edge and no lock."""
        self._cancelled += 1
        self._set_edges(waiter, frozenset())
        if waiter.token is not None:  # granted, but cancelled before it could return
            self.release(waiter.token)
            return
        if waiter in res.queue:
            res.queue.remove(waiter)
        self._pump(res, name)

    def _forget_if_idle(self, name: str) -> None:
        res = self._resources.get(name)
        if res is not None and not res.holders and not res.queue:
            del self._resources[name]


class TaskLocks:
    """``ctx.locks``: the lock manager seen by one holder (a task)."""

    def __init__(self, manager: LockManager, holder: str) -> None:
        self.manager = manager
        self.holder = holder

    async def acquire(self, name: str, *, exclusive: bool = True) -> LockToken:
        return await self.manager.acquire(self.holder, name, exclusive=exclusive)

    def acquire_nowait(self, name: str, *, exclusive: bool = True) -> LockToken:
        return self.manager.acquire_nowait(self.holder, name, exclusive=exclusive)

    def release(self, token: LockToken) -> None:
        self.manager.release(token)

    def open_lock(
        self, name: str, *, exclusive: bool = True
    ) -> AbstractAsyncContextManager[LockToken]:
        """``async with ctx.locks.open_lock("db"):`` holds ``db`` for the body."""
        return self.manager.open_lock(self.holder, name, exclusive=exclusive)

    def held(self) -> list[str]:
        return self.manager.held_by(self.holder)
