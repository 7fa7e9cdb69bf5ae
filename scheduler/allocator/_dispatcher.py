"""The pools' scheduling: queueing requests, choosing who is served next, handing over grants.

Each pool is a run queue (its :class:`~scheduler.allocator._waitqueue.WaitQueue`);
the :class:`Dispatcher` is the scheduler that works on it, as an OS scheduler's
enqueue / pick-next / dispatch work on a CPU's run queue:

* :meth:`Dispatcher.enqueue` queues a request that cannot be granted at once, at
  the level and key its policy gives it;
* :meth:`Dispatcher.select` picks the next waiter (the policy's choice unless a
  share guard applies);
* :meth:`Dispatcher.dispatch`, the one scheduling loop, grants waiters in that
  order while the chosen one fits and wakes their tasks.  It runs whenever
  capacity may have come free (a lease ends, a request is withdrawn, a
  capacity grows, a bucket refills, a priority ages): there is no separate
  scheduling pass.

The policy is asked per request only when it does not declare
:class:`~policies.fairness.PolicyHints`; otherwise a request's level and key
come from its holder's cached ``level0`` and service counter, and the policy
is consulted again only when a waiter's inputs change.  This is the hot path:
O(1) queue operations, few Python calls, and as few allocations as possible
(each request reuses its holder's waiter record, queued as its own entry).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio

from scheduler.allocator._aging import Aging
from scheduler.allocator._asyncio_park import Parking
from scheduler.allocator._bands import key
from scheduler.allocator._bound_policy import BoundPolicy
from scheduler.allocator._grants import Grants
from scheduler.allocator._leases import LEASE_IDS, Lease, new_lease_id
from scheduler.allocator._pools import Pool
from scheduler.allocator._records import GONE, GRANTED, QUEUED, Account, Holder, Waiter, new_waiter
from scheduler.allocator._servicer import Alarm

__all__ = ["Dispatcher"]

_new_lease = object.__new__
_take_id = LEASE_IDS.pop  # a ready-made lease id (new_lease_id refills the list)


class Dispatcher:
    """Queues requests on the pools and grants them in the policy's order."""

    #: Slots: the hot path reads these attributes on every request.
    __slots__ = (
        "_aging_step", "_alarm", "_by_counter", "_by_id", "_changes_at", "_enqueue_priority",
        "_grants", "_invalid_state", "_min_share", "_native", "_park_new", "_priority", "_rank",
        "_seq", "_slack", "_ttl", "_w_in", "_wake", "_window",
    )

    def __init__(self, bound: BoundPolicy, grants: Grants, alarm: Alarm, *,
                 slack: float, min_share: float) -> None:
        self._priority = bound.priority
        self._rank = bound.rank
        self._changes_at = bound.changes_at
        self._by_counter = bound.by_counter
        self._aging_step = bound.aging_step
        self._enqueue_priority = bound.enqueue_priority
        self._grants = grants
        # What the dispatch loop's inline grant reads (see Grants.grant).
        self._by_id, self._ttl, self._window = grants.by_id, grants.ttl, grants.window
        self._w_in = bound.w_in
        self._alarm = alarm
        self._slack = slack
        self._min_share = min_share
        self._seq = 0
        # How waiters park; bound to the running loop's cheapest primitive by bind().
        self._park_new: Callable[[], Any] = anyio.Event
        self._wake: Callable[[Any], None] = anyio.Event.set
        #: Waiters park on a loop future (awaitable itself) rather than an anyio Event.
        self._native = False
        #: What setting a done future's result raises (native parking only).
        self._invalid_state: type[BaseException] = RuntimeError

    def bind(self, park: Parking) -> None:
        """Park waiters with the running loop's primitive."""
        self._park_new, self._wake, self._native = park.new, park.wake, park.native
        self._invalid_state = park.invalid_state

    # -- holders' starting levels -----------------------------------------------------------
    def holder_changed(self, h: Holder) -> None:
        """The holder's class, demotion or blocking changed: refresh its cached level."""
        hint = self._enqueue_priority
        h.level0 = None if hint is None else hint(h.base_priority, h.token_fraction, h.blocking)
        for a in h.accounts.values():
            self.place(a)

    def place(self, a: Account) -> None:
        """Refresh the account's copies of its holder's class and starting level."""
        h, p = a.holder, a.pool
        a.background = h.background
        level = h.level0
        if level is None:
            a.level = None
        else:
            lq = p.levels.get(level)
            a.level = lq if lq is not None else p.new_level(level)

    # -- queueing ---------------------------------------------------------------------------
    def enqueue(
        self, p: Pool, a: Account, tokens: int, calls: int, requested: int, now: float
    ) -> Waiter:
        """Queue a request (cut to the max share), serve the pool; the caller awaits ``event``."""
        seq = self._seq = self._seq + 1
        alone = a.waiter is None
        if alone:
            # The holder becomes backlogged: lift its counter (see _lift) unless a queued
            # counter, which bounds the least one from above, shows there is nothing to lift.
            lq = a.level
            first = lq.first if lq is not None else None
            probe = first[0].w if first else p.last_arrival
            if probe is None or probe.entry is None or a.counter < probe.counter:
                _lift(p, a)
        counter = a.counter
        if counter < p.floor:
            p.floor = counter
        w = a.spare
        if w is None:
            w = new_waiter(a, seq, now, tokens, calls, requested)
        else:
            # Its holder fields are current (see reindex_holder); lease, error: see states.
            a.spare = None
            w.seq = seq
            w.enqueued_at = now
            w.tokens = tokens
            w.counter = counter
            w.calls = calls
            w.requested = requested
            w.state = QUEUED
        w.event = self._park_new()
        if alone:  # Account.add_waiter, inline
            a.waiter = w
        else:
            a.add_waiter(w)
        p.last_arrival = w
        p.n_queued += 1
        lq = a.level
        if lq is not None and self._by_counter:
            # The record is its own entry, keyed by its counter (BandQueue.push, inline).
            w.entry = w.centry = w
            w.self_queued = True
            band = counter // lq.quantum
            d = lq.bands.get(band)
            if d is None:
                d = lq.new_band(band)
            d.append(w)
            if w.background:
                p.n_bg_queued += 1
                p.bg.push(w)
            # The first aging step is queued by a sweep (see Aging), due by then.
            step: float = self._aging_step  # type: ignore[assignment] # set when hinted
            if p.aging.next_at > now + step:
                self._sweep_by(p.aging, step)
        else:
            self._push(p, a, w, now)
        if p.in_use < p.slot_cap:
            self.dispatch(p, now)
        return w

    def _push(self, p: Pool, a: Account, w: Waiter, now: float) -> None:
        """Queue ``w`` where the policy says: asked now (no hints), or at its holder's cached
        level by its constant rank (hints, ranks not by counter)."""
        lq = a.level
        if lq is None:
            if w.background:
                p.n_bg_queued += 1
            self.index(p, w, now)
            return
        w.entry = key(self._rank(w), w)
        lq.push(w.entry)
        w.centry = key(w.counter, w)
        p.fair.push(w.centry)
        if w.background:
            p.n_bg_queued += 1
            p.bg.push(w.centry)
        step: float = self._aging_step  # type: ignore[assignment] # set when hinted
        if p.aging.next_at > now + step:
            self._sweep_by(p.aging, step)

    def _sweep_by(self, aging: Aging, step: float) -> None:
        """A request just queued ages ``step`` from now: the next sweep must come by then.

        (A sweep queues the first change of the requests that arrived since the last one
        at least half a step before it is due.)
        """
        at = aging.next_at = aging.aged_upto + step
        alarm = self._alarm
        if at < alarm.at:
            alarm.ring()

    def index(self, p: Pool, w: Waiter, now: float) -> None:
        """(Re)insert ``w`` at the priority and rank the policy gives it now."""
        w.epoch += 1
        level = self._priority(w, now)
        if w.counter < p.floor:
            p.floor = w.counter
        p.index(w, level, w.counter if self._by_counter else self._rank(w))
        p.maybe_compact()
        at = self._changes_at(w, now)
        if at is None:
            return
        if at <= now:
            at = math.nextafter(now, math.inf)
        p.aging.push(at, w)  # lowers p.aging.next_at
        alarm = self._alarm
        if at < alarm.at:
            alarm.ring()

    def requeue(self, p: Pool, a: Account, now: float) -> None:
        """The holder's service counter moved: its other queued requests move with it."""
        for w in a.waiters:  # a copy
            if w.state == QUEUED:
                w.counter = a.counter
                self.index(p, w, now)

    def reindex_holder(self, h: Holder, now: float) -> None:
        """The holder's class, demotion or blocking changed: move its queued requests."""
        self.holder_changed(h)
        touched = []
        for a in h.accounts.values():
            spare = a.spare
            if spare is not None:
                spare.base_priority, spare.token_fraction = h.base_priority, h.token_fraction
                spare.blocking, spare.background = h.blocking, h.background
            if a.waiter is None:
                continue
            p = a.pool
            for w in a.waiters:
                w.base_priority, w.token_fraction, w.blocking = (
                    h.base_priority, h.token_fraction, h.blocking)
                if w.state == QUEUED:
                    if w.background != h.background:
                        p.n_bg_queued += 1 if h.background else -1
                    w.background = h.background
                    self.index(p, w, now)
                else:
                    w.background = h.background
            touched.append(p)
        for p in touched:
            self.dispatch(p, now)

    def withdraw(self, h: Holder, error: BaseException) -> list[Pool]:
        """Take every wait of ``h`` out of its queues; each raises ``error``.

        Returns the pools it waited in (the caller serves them).
        """
        touched = []
        for a in h.accounts.values():
            if a.waiter is None:
                continue
            p = a.pool
            for w in a.waiters:
                p.unlink(w)
                w.state, w.error = GONE, error
                self._wake(w.event)
            touched.append(p)
        return touched

    def unpark(self, p: Pool, hid: str, now: float) -> None:
        """Queue the holder's parked requests again (one of its leases ended)."""
        for w in p.unpark(hid):
            self.index(p, w, now)

    # -- the scheduling loop ------------------------------------------------------------------
    def select(self, p: Pool) -> Waiter | None:
        """The next waiter to serve: the policy's choice unless a share guard applies."""
        # The background floor compares shares of the decayed window; a common decay factor
        # does not change the comparison, so the window need not be decayed here.
        if p.n_bg_queued and p.recent_bg < self._min_share * p.recent_all:
            first = p.bg.head()
            if first is not None:
                return first
        # The head of the highest non-empty level is the policy's choice.
        top = p.top()
        if top is None:
            return None
        if p.track_fair:
            least = p.fair.head()
            if least is not None and top.counter - least.counter > self._slack:
                return least
            return top
        if top.counter - p.floor <= self._slack:
            return top  # within the slack of every queued counter
        return self._least(p, top)

    def _least(self, p: Pool, top: Waiter) -> Waiter:
        """``top`` (the highest level's head) may be more than the slack ahead: the least
        served level head if it is, else ``top``.  (The rank is the service counter.)

        The scan sees every level, so it raises ``p.floor`` to the lowest band edge of any
        level: each level's head is in its lowest band, so the edge of the least head's.
        """
        least = top
        for lq in p.queues:
            d = lq.first
            if d is None:
                continue  # an empty level
            if d and not lq.first_late:
                entry = d[0]
                w: Waiter = entry.w
                if w.entry is not entry:
                    head = lq.head()  # drops dead entries and empty bands in front
                    if head is None:
                        continue
                    w = head
            else:
                head = lq.head()  # late ones first, or an empty band in front
                if head is None:
                    continue
                w = head
            if w.counter < least.counter:
                least = w
        q = p.level_quantum  # > 0: ranks by counter need bands (see BoundPolicy)
        p.floor = least.counter // q * q
        return least if top.counter - least.counter > self._slack else top

    def dispatch(self, p: Pool, now: float) -> None:
        """Grant waiters in order while the chosen one fits: the one scheduling loop.

        Per pass: apply due priority changes (aging), pick the next waiter, park it if its
        holder is over the max share while others wait, stop if it does not fit (no
        bypass; a bucket refill wakes the servicer), else grant it and wake its task.
        """
        if p.aging.next_at <= now:
            self._age(p, now)
        cap = p.slot_cap
        slack = self._slack
        while p.n_queued and p.in_use < cap:
            # select's usual answers, inline (fewer Python calls per grant): no share guard is
            # due and the highest level's head is live (_least: unless it is within the slack
            # of every queued counter).  Anything else asks select.
            w = None
            if not p.track_fair and not (
                    p.n_bg_queued and p.recent_bg < self._min_share * p.recent_all):
                for lq in p.queues:
                    d = lq.first
                    if d is not None:
                        if d and not lq.first_late:
                            entry = d[0]
                            w = entry.w
                            if w.entry is not entry:
                                w = None
                            elif w.counter - p.floor > slack:
                                w = self._least(p, w)  # the top, live, may be too far ahead
                        break
            if w is None:
                w = self.select(p)
                if w is None:  # pragma: no cover - n_queued says there is one
                    break
            a: Account = w.account  # type: ignore[assignment] # always set on a queued waiter
            tokens, calls = w.tokens, w.calls
            # Requests are cut to the max share when they come (and when a capacity
            # shrinks), so a holder that holds nothing cannot go over it.
            if a.held_calls and p.exceeds_share(a, tokens, calls) and p.waits_besides(a):
                p.park(w)
                continue
            if p.in_use + calls > cap:
                return
            if not p.slots_only and not p.fits(tokens, calls, now):
                self._wait_refill(p, tokens, calls, now)
                return
            self._grant(p, w, a, tokens, calls, now)
        if p.n_parked and len(p.parked) == 1:
            self._unpark_last(p, now)

    def _grant(self, p: Pool, w: Waiter, a: Account, tokens: int, calls: int, now: float) -> None:
        """Grant the chosen waiter: it leaves the queue, gets its lease, its task wakes."""
        w.state = GRANTED
        entry = w.entry
        w.entry = None  # its entries turn dead (``centry`` too), dropped lazily
        out = entry is w  # the record, its own entry, leaves every queue now: reusable
        lq = a.level
        if lq is not None:
            d = lq.first
            if d and d[0] is entry:
                d.popleft()  # now rather than at the next select (see enqueue)
            else:
                out = False
        p.n_queued -= 1
        if a.background and not _leave_bg(p, w):  # (the class is the waiter's)
            out = False
        if out:
            w.self_queued = False
        if a.waiter is w and a.more is None:  # Account.remove_waiter, inline
            a.waiter = None
        else:
            a.remove_waiter(w)
        w_in = self._w_in
        if not p.slots_only or w_in is None:
            lease = self._grants.grant(p, a, tokens, calls, w.requested, now)
        else:  # Grants.grant for a pool that only counts slots, inline: kept in step with it
            p.in_use += calls
            a.held_tokens += tokens
            a.held_calls += calls
            charge = tokens * w_in
            if charge:
                a.counter += charge
                if a.waiter is not None:
                    self.requeue(p, a, now)
            if now >= p.decay_at:
                p.decay(now, self._window)
            weight = charge or 1.0
            p.recent_all += weight
            if a.background:
                p.recent_bg += weight
            lease = _new_lease(Lease)
            lease.id = lease_id = _take_id() if LEASE_IDS else new_lease_id()
            lease.tokens, lease.calls, lease.requested_tokens = tokens, calls, w.requested
            lease.granted_at, lease.charged, lease.active = now, charge, True
            ttl = lease._ttl = self._ttl
            lease._account, lease._deadline = a, None
            self._by_id[lease_id] = lease
            grants = p.grants = p.grants + 1
            if not grants & 255:
                p.maybe_compact()
            if now + ttl < self._alarm.at:
                self._alarm.ring()  # its deadline comes before the servicer wakes
        if self._native:
            try:
                w.event.set_result(lease)
            except self._invalid_state:  # cancelled meanwhile: its abandon returns it
                w.lease = lease
        else:
            w.lease = lease
            self._wake(w.event)

    def _age(self, p: Pool, now: float) -> None:
        """Move the waiters whose priority changed by ``now``."""
        for aged in p.aging.pop_due(now, p.n_queued):
            self.index(p, aged, now)

    def _wait_refill(self, p: Pool, tokens: int, calls: int, now: float) -> None:
        """The chosen request waits for the buckets: wake the servicer when they hold it."""
        at = p.refill_at = p.refill_time(tokens, calls, now)
        alarm = self._alarm
        if at is not None and at < alarm.at:
            alarm.ring()

    def _unpark_last(self, p: Pool, now: float) -> None:
        """Only one holder is left waiting: the max share no longer applies to it."""
        self.unpark(p, next(iter(p.parked)), now)
        self.dispatch(p, now)


def _lift(p: Pool, a: Account) -> None:
    """VTC: a holder becoming backlogged is lifted to the least backlogged counter.

    So an idle holder cannot bank credit.  The caller probes first: any queued counter
    bounds the least one from above, so a holder at or past it has nothing to gain.  Its
    probe is the head of the holder's own level (usually queued: a grant pops its entry
    from there, and it is that level's least served), else the last arrival.
    """
    least = p.least_counter()
    if least is not None and least > a.counter:
        a.counter = least


def _leave_bg(p: Pool, w: Waiter) -> bool:
    """A granted background waiter leaves the background queue; whether its entry did now.

    Its entry is usually that queue's head: dropped now, with any dead heads (left to the
    rare floor check, they would pile up, and keep their waiters' objects, until
    compaction).
    """
    p.n_bg_queued -= 1
    bd = p.bg.first
    if bd and bd[0] is w.centry:
        bd.popleft()
        return True
    p.bg.head()
    return False

