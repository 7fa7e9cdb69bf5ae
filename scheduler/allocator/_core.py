"""The allocator's scheduling core: queueing, who is served next, grants, returns.

Private to :mod:`scheduler.allocator._allocator`, whose :class:`Allocator`
extends :class:`AllocatorCore` with the other public methods (``acquire`` lives
here, with the queueing inline).  Every model call passes through here twice
(``acquire``, then ``settle``), so this is the hot path: no pydantic and no
logging per request, O(1) queue operations, no per-lease tasks, few Python
calls, and as few allocations as possible (each request reuses its holder's
waiter record, queued as its own entry; a wait allocates its future, a grant
its :class:`Lease`).

When a lease ends and requests wait, the freed capacity goes straight to the
next one (:meth:`AllocatorCore._dispatch` runs inside ``settle`` / ``release``):
there is no separate scheduling pass.  The policy is asked per request only
when it does not declare :class:`~policies.fairness.PolicyHints`; otherwise a
request's level and key come from its holder's cached ``level0`` and service
counter, and the policy is consulted again only when a waiter's inputs change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import structlog

from policies.fairness import AllocationPolicy, PriorityWithFairness
from scheduler.allocator._asyncio_park import backend_clock, parking
from scheduler.allocator._leases import LEASE_IDS, Lease, LeaseTable, new_lease_id
from scheduler.allocator._pools import Pool
from scheduler.allocator._records import GONE, GRANTED, PARKED, QUEUED, Account, Holder, Waiter
from scheduler.allocator._waitqueue import key
from scheduler.config import PRIORITY_VALUES, AllocatorConfig, PoolConfig
from scheduler.core import AllocationError, EventBus, LeaseError

__all__ = ["AllocatorCore"]

_log = structlog.get_logger("vibe_engine.allocator")
_new_lease = object.__new__
_take_id = LEASE_IDS.pop  # a ready-made lease id (new_lease_id refills the list)
_BACKGROUND = PRIORITY_VALUES["background"]
_NO_HINT: Any = object()


class AllocatorCore:
    """State and scheduling loop shared by the public :class:`Allocator` methods."""

    #: Slots: the hot path reads these attributes on every request.
    __slots__ = (
        "_aging_step", "_bound", "_by_counter", "_by_id", "_changes_at", "_clock",
        "_clock_injected", "_cost", "_default_pool", "_enqueue_priority", "_event_cls",
        "_events", "_holders", "_invalid_state", "_kick", "_leases", "_min_share",
        "_native", "_park_new", "_pools", "_priority", "_rank", "_rank_quantum", "_seq",
        "_slack",
        "_sleep_until", "_ttl", "_w_in", "_wake", "_weights", "_window", "config",
        "policy",
    )

    def __init__(
        self,
        config: AllocatorConfig | None = None,
        *,
        policy: AllocationPolicy | None = None,
        clock: Callable[[], float] | None = None,
        events: EventBus | None = None,
    ) -> None:
        cfg = config or AllocatorConfig()
        self.config = cfg
        self.policy: AllocationPolicy = policy or PriorityWithFairness(cfg.policy_params())
        self._bind_policy(self.policy)
        self._pools = {name: self._new_pool(name, pc) for name, pc in cfg.pools.items()}
        self._default_pool = next(iter(self._pools), None)
        self._holders: dict[str, Holder] = {}
        self._leases = LeaseTable()
        self._by_id = self._leases.by_id
        self._ttl = cfg.lease_ttl_s
        self._slack = float(cfg.fairness_slack_tokens)
        self._min_share = cfg.min_share
        self._window = cfg.share_window_s
        self._events = events
        self._clock: Callable[[], float] = clock or anyio.current_time
        self._clock_injected = clock is not None
        self._event_cls: Callable[[], Any] = anyio.Event
        # How waiters park; bound to the running loop's cheapest primitive by _bind().
        self._park_new: Callable[[], Any] = anyio.Event
        self._wake: Callable[[Any], None] = anyio.Event.set
        #: Waiters park on a loop future (awaitable itself) rather than an anyio Event.
        self._native = False
        #: What setting a done future's result raises (native parking only).
        self._invalid_state: type[BaseException] = RuntimeError
        self._bound = False
        self._seq = 0
        self._kick: Any = None
        #: The servicing task's wake-up deadline; -inf when not running or already kicked.
        self._sleep_until = -math.inf

    def _bind_policy(self, policy: AllocationPolicy) -> None:
        """Bind the policy's methods once and read its optional PolicyHints."""
        self._priority = policy.priority
        self._rank = policy.rank
        self._changes_at = policy.priority_changes_at
        self._cost = policy.service
        #: The level queues' band width: the policy's ``rank_quantum`` (0: exact ranks).
        self._rank_quantum = float(getattr(policy, "rank_quantum", 0.0))
        # The inline push keys the level queues by counter bands (needs a quantum).
        self._by_counter = (bool(getattr(policy, "ranks_by_counter", False))
                            and self._rank_quantum > 0)
        hint = getattr(policy, "enqueue_priority", None)
        step = getattr(policy, "aging_step_s", _NO_HINT)
        weights: tuple[float, float] | None = getattr(policy, "service_weights", None)
        hinted = callable(hint) and step is not _NO_HINT and weights is not None
        self._enqueue_priority: Callable[[int, float, bool], int] | None = (
            hint if hinted else None)
        #: Constant first-change offset (FIFO-tracked); inf: never; None: ask the policy.
        self._aging_step: float | None = None
        #: Service per input and output token (``None``: ask the policy).
        self._weights: tuple[float, float] | None = None
        self._w_in: float | None = None
        if hinted and weights is not None:
            self._aging_step = math.inf if step is None else float(step)
            self._weights = (float(weights[0]), float(weights[1]))
            self._w_in = self._weights[0]

    # -- binding and records ------------------------------------------------------------------
    def _bind(self) -> None:
        self._event_cls = type(anyio.Event())
        park = parking()
        self._park_new, self._wake, self._native = park.new, park.wake, park.native
        self._invalid_state = park.invalid_state
        if not self._clock_injected:
            self._clock = backend_clock()
        self._bound = True

    def _new_pool(self, name: str, config: PoolConfig) -> Pool:
        cfg = self.config
        p = Pool(name, config, cfg.max_share, cfg.share_window_s,
                 track_fair=not self._by_counter, quantum=cfg.fairness_quantum_tokens,
                 level_quantum=self._rank_quantum)
        if self._aging_step is not None:
            p.first_step = self._aging_step
        return p

    def _holder(self, holder: str) -> Holder:
        h = self._holders.get(holder)
        if h is None:
            base = PRIORITY_VALUES["normal"]
            h = self._holders[holder] = Holder(holder, base, base <= _BACKGROUND)
            self._holder_changed(h)
        return h

    def _holder_changed(self, h: Holder) -> None:
        hint = self._enqueue_priority
        h.level0 = None if hint is None else hint(h.base_priority, h.token_fraction, h.blocking)
        for a in h.accounts.values():
            self._copy_holder(a)

    def _copy_holder(self, a: Account) -> None:
        """Refresh the account's copies of its holder's class and starting level."""
        h, p = a.holder, a.pool
        a.background = h.background
        level = h.level0
        if level is None:
            a.level = None
        else:
            lq = p.levels.get(level)
            a.level = lq if lq is not None else p.new_level(level)

    def _account(self, p: Pool, holder: str) -> Account:
        a = p.accounts.get(holder)
        if a is None:
            h = self._holder(holder)
            a = p.accounts[holder] = h.accounts[p.name] = Account(h)
            a.pool = p
            self._copy_holder(a)
        return a

    def _kick_servicer(self) -> None:
        self._sleep_until = -math.inf
        self._kick.set()

    # -- queue --------------------------------------------------------------------------------
    async def acquire(
        self, holder: str, *, tokens: int = 0, calls: int = 1, pool: str | None = None
    ) -> Lease:
        """Wait for a lease of ``tokens`` and ``calls`` from ``pool`` (R5.4, R5.5).

        A request above the pool's max share is granted the max share (see
        :attr:`Lease.tokens`).  Returns at once, without yielding, when the
        request can be granted and nobody is waiting.  Cancellation while
        waiting (or right after the grant) gives everything back.
        """
        try:
            if tokens < 0 or calls < 1:
                raise KeyError  # _admit raises the precise error
            p = self._pools[self._default_pool if pool is None else pool]  # type: ignore[index]
            a = p.accounts[holder]  # an account exists only once the allocator is bound
        except KeyError:
            p, a = self._admit(holder, tokens, calls, pool)
        requested = tokens
        if p.max_tokens is not None and tokens > p.max_tokens:
            tokens = p.max_tokens
        if p.max_calls is not None and calls > p.max_calls:
            calls = p.max_calls
        now = self._clock()
        if not (p.n_queued or p.n_parked) and p.fits(tokens, calls, now):
            return self._grant(p, a, tokens, calls, requested, now)

        # -- queue the request ------------------------------------------------------------
        seq = self._seq = self._seq + 1
        alone = a.waiter is None
        if alone:
            # VTC: a holder becoming backlogged is lifted to the least backlogged counter,
            # so an idle holder cannot bank credit.  Any queued waiter's counter bounds the
            # least one from above; at or past it, there is nothing to lift.  The probe: the
            # head of the holder's own level (a grant pops its entry from there, so the head
            # is usually queued, and it is that level's least served), else the last arrival.
            lq = a.level
            first = lq.first if lq is not None else None
            probe = first[0].w if first else p.last_arrival
            if probe is None or probe.entry is None or a.counter < probe.counter:
                least = p.least_counter()
                if least is not None and least > a.counter:
                    a.counter = least
            del probe  # (see below: what only queueing needed goes before the wait)
        counter = a.counter
        if counter < p.floor:
            p.floor = counter
        w = a.spare
        if w is None:
            h = a.holder
            w = Waiter(h.id, seq, now, h.base_priority, tokens, h.token_fraction, h.blocking,
                       counter, account=a, calls=calls, requested=requested,
                       background=h.background, pool=p.name)
        else:
            # The holder's fields (class, demotion, blocking) are already current on a spare
            # record: _reindex_holder keeps them so.  Its lease and error are read only in
            # the states that set them.
            a.spare = None
            w.seq = seq
            w.enqueued_at = now
            w.tokens = tokens
            w.counter = counter
            w.calls = calls
            w.requested = requested
            w.state = QUEUED
        event = w.event = self._park_new()
        if alone:  # Account.add_waiter, inline
            a.waiter = w
        else:
            a.add_waiter(w)
        p.last_arrival = w
        p.n_queued += 1
        lq = a.level
        if lq is None:
            if w.background:
                p.n_bg_queued += 1
            self._index(p, w, now)
        else:
            # Hinted policy: the level is the holder's cached one, the key its counter (or
            # the policy's constant rank); dead entries go when they reach a front.
            if self._by_counter:
                # The record is its own entry, keyed by its counter: no entry object, and
                # none to free, out of the caches, when the grant pops it.
                w.entry = w.centry = w
                w.self_queued = True
                band = counter // lq.quantum  # BandQueue.push, inline
                d = lq.bands.get(band)
                if d is None:
                    d = lq.new_band(band)
                d.append(w)
                del band
            else:
                w.entry = key(self._rank(w), w)
                lq.push(w.entry)
                w.centry = key(counter, w)
                p.fair.push(w.centry)
            if w.background:
                p.n_bg_queued += 1
                p.bg.push(w.centry)
            # The first aging step is queued by a sweep at least half a step before it is
            # due (see WaitQueue); the sweep itself must be due by then.
            step: float = self._aging_step  # type: ignore[assignment] # set when hinted
            if p.next_age > now + step:
                at = p.next_age = p.aged_upto + step
                if at < self._sleep_until:
                    self._kick_servicer()
        if p.in_use < p.slot_cap:
            self._dispatch(p, now)
        # What only queueing needed goes now, while it is in the CPU caches: after the wait
        # this frame's end would drop the last references to these objects, by then cold.
        del now, seq, counter

        # -- wait for the grant -----------------------------------------------------------
        lease: Lease | None
        try:
            if self._native:
                lease = await event  # the grant sets the lease as the future's result
            else:
                await event.wait()
                lease = w.lease if w.state == GRANTED else None
        except BaseException:
            self._abandon(w)
            raise
        if lease is None:
            raise w.error or LeaseError("request withdrawn")
        w.event = None  # freed now, while its memory is still in the CPU caches
        if not w.self_queued:
            a.spare = w  # the record serves the holder's next wait here
        return lease

    def _admit(
        self, holder: str, tokens: int, calls: int, pool: str | None
    ) -> tuple[Pool, Account]:
        """Validate a request (binding to the running loop on first use); its pool and account."""
        if not self._bound:
            self._bind()
        name = pool if pool is not None else self._default_pool
        p = self._pools.get(name) if name is not None else None
        if p is None:
            raise AllocationError(f"unknown pool {name!r}; known: {sorted(self._pools)}")
        if tokens < 0 or calls < 1:
            raise AllocationError(f"need tokens >= 0 and calls >= 1, got {tokens}, {calls}")
        return p, self._account(p, holder)

    def _index(self, p: Pool, w: Waiter, now: float) -> None:
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
        p.push_change(at, w)  # lowers p.next_age
        if at < self._sleep_until:
            self._kick_servicer()

    def _reindex_holder(self, h: Holder) -> None:
        """The holder's class, demotion or blocking changed: move its queued requests."""
        self._holder_changed(h)
        touched = []
        now = self._clock() if h.accounts else 0.0
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
                    self._index(p, w, now)
                else:
                    w.background = h.background
            touched.append(p)
        for p in touched:
            self._dispatch(p, now)

    def _refresh_counter(self, p: Pool, a: Account, now: float) -> None:
        """The holder's other queued requests move with its counter."""
        for w in a.waiters:  # a copy
            if w.state == QUEUED:
                w.counter = a.counter
                self._index(p, w, now)

    # -- the scheduling loop ------------------------------------------------------------------
    def _select(self, p: Pool) -> Waiter | None:
        """The next waiter to serve: the policy's choice unless a share guard applies."""
        # The background floor compares shares of the decayed window; a common decay factor
        # does not change the comparison, so the window need not be decayed here.
        if p.n_bg_queued and p.recent_bg < self._min_share * p.recent_all:
            first = p.bg.head()
            if first is not None:
                return first
        # The head of the highest non-empty level is the policy's choice; when the rank is
        # the service counter, the smallest head counter is (within a band) the least-served
        # waiter.  ``p.floor`` bounds every queued counter from below: while the top is
        # within the slack of it, the top is within the slack of the least served too, and
        # the other levels' heads need not be looked at.
        top: Waiter | None = None
        least: Waiter | None = None
        slack = self._slack
        edge = math.inf
        for lq in p.queues:
            d = lq.first
            if d is None:
                continue  # an empty level
            if d:
                entry = d[0]
                w: Waiter = entry.w
            if not d or w.entry is not entry or lq.first_late:  # dead, or late ones first
                head = lq.head()  # drops dead entries and empty bands in front
                if head is None:
                    continue
                w = head
            if top is None:
                if p.track_fair:
                    top = w
                    break
                if w.counter - p.floor <= slack:
                    return w  # within the slack of every queued counter
                top = least = w
            elif w.counter < least.counter:  # type: ignore[union-attr] # set with top
                least = w
            low = lq.low()  # the level's keys, its counters, are at least this
            if low < edge:
                edge = low
        else:
            if least is not None:
                p.floor = edge  # the scan saw every level: the highest bound it can know
        if top is None:
            return None
        if p.track_fair:
            least = p.fair.head()
        if least is not None and top.counter - least.counter > slack:
            return least
        return top

    def _dispatch(self, p: Pool, now: float) -> None:
        """Grant waiters in order while the chosen one fits: the one scheduling loop.

        Per pass: apply due priority changes (aging), pick the next waiter
        (:meth:`_select`), park it if its holder is over the max share while
        others wait, stop if it does not fit (no bypass; a bucket refill wakes
        the servicer), else grant it and wake its task.
        """
        if p.next_age <= now:
            for aged in p.pop_changed(now):
                self._index(p, aged, now)
        cap = p.slot_cap
        while p.n_queued and p.in_use < cap:
            w = self._select(p)
            if w is None:  # pragma: no cover - n_queued says there is one
                break
            a: Account = w.account  # type: ignore[assignment] # always set on a queued waiter
            tokens, calls = w.tokens, w.calls
            # Requests are cut to the max share (when they come, and again when a capacity
            # shrinks), so a holder that holds nothing cannot go over it.
            if a.held_calls and p.exceeds_share(a, tokens, calls) and p.waits_besides(a):
                p.park(w)
                continue
            if p.in_use + calls > cap:
                return
            if not p.slots_only and not p.fits(tokens, calls, now):
                at = p.refill_at = p.refill_time(tokens, calls, now)
                if at is not None and at < self._sleep_until:
                    self._kick_servicer()
                return
            # Grant: the waiter leaves the queue (its entries are dropped lazily).
            w.state = GRANTED
            entry = w.entry
            w.entry = None  # (which also makes ``centry`` stale)
            # Whether the record, queued as its own entry, leaves every queue it is in now.
            out = entry is w
            lq = a.level
            if lq is not None:
                d = lq.first
                if d and d[0] is entry:
                    d.popleft()  # now rather than at the next select (see acquire)
                else:
                    out = False
            p.n_queued -= 1
            if a.background:  # the same as the waiter's while it is queued
                p.n_bg_queued -= 1
                # Its entry in the background queue is usually that queue's head: drop it
                # now, with any dead heads (left to the rare floor check, they would pile
                # up, and keep their waiters' objects, until compaction).
                bd = p.bg.first
                if bd and bd[0] is w.centry:
                    bd.popleft()
                else:
                    p.bg.head()
                    out = False
            if out:
                w.self_queued = False  # the record can serve the holder's next wait
            if a.waiter is w and a.more is None:  # Account.remove_waiter, inline
                a.waiter = None
            else:
                a.remove_waiter(w)
            lease = self._grant(p, a, tokens, calls, w.requested, now)
            if self._native:
                try:
                    w.event.set_result(lease)
                except self._invalid_state:  # cancelled meanwhile: _abandon returns the lease
                    w.lease = lease
            else:
                w.lease = lease
                self._wake(w.event)
        if p.n_parked and len(p.parked) == 1:
            # Only one holder is left waiting: the max share no longer applies to it.
            self._unpark(p, next(iter(p.parked)), now)
            self._dispatch(p, now)

    def _unpark(self, p: Pool, hid: str, now: float) -> None:
        for w in p.unpark(hid):
            self._index(p, w, now)

    # -- grants and returns ---------------------------------------------------------------------
    def _grant(
        self, p: Pool, a: Account, tokens: int, calls: int, requested: int, now: float
    ) -> Lease:
        p.in_use += calls
        if not p.slots_only:
            if p.tpm is not None:
                p.tpm.level -= tokens
            if p.rpm is not None:
                p.rpm.level -= calls
        a.held_tokens += tokens
        a.held_calls += calls
        # Charge the grant to the holder's service counter now (VTC); settle corrects it.
        w_in = self._w_in
        charge = tokens * w_in if w_in is not None else self._cost(tokens, 0)
        if charge:
            a.counter += charge
            if a.waiter is not None:
                self._refresh_counter(p, a, now)
        if now >= p.decay_at:
            p.decay(now, self._window)
        weight = charge or 1.0  # charge >= 0; a grant without tokens counts as one
        p.recent_all += weight
        if a.background:
            p.recent_bg += weight
        # Lease(...) without its __init__ frame: one Python call less per grant.
        lease = _new_lease(Lease)
        try:
            lease_id = _take_id()
        except IndexError:
            lease_id = new_lease_id()
        lease.id = lease_id
        lease.tokens = tokens
        lease.calls = calls
        lease.requested_tokens = requested
        lease.granted_at = now
        ttl = lease._ttl = self._ttl
        lease.charged = charge
        lease.active = True
        lease._account = a
        lease._deadline = None
        self._by_id[lease_id] = lease  # the latest deadline: at the end (see LeaseTable)
        grants = p.grants = p.grants + 1
        if not grants & 255:
            p.maybe_compact()  # now and then, purge what lazy deletion left (amortised O(1))
        if now + ttl < self._sleep_until:
            self._kick_servicer()
        return lease

    def _add_service(self, lease: Lease, delta: float, now: float) -> None:
        """Correct the holder's service counter for ``lease`` (its queued requests follow)."""
        if not delta:
            return
        a: Account = lease._account
        a.counter += delta
        if a.waiter is not None:
            self._refresh_counter(a.pool, a, now)

    def _end(self, lease: Lease, now: float, tokens_back: int, calls_back: bool) -> None:
        """The lease is over (already out of the table): capacity and holdings come back,
        and waiters are served."""
        a: Account = lease._account
        p: Pool = a.pool
        calls = lease.calls
        p.in_use -= calls
        if not p.slots_only:
            if tokens_back and p.tpm is not None:
                p.tpm.refill(now)
                p.tpm.give(tokens_back)
            if calls_back and p.rpm is not None:
                p.rpm.refill(now)
                p.rpm.give(calls)
        a.held_tokens -= lease.tokens
        a.held_calls -= calls
        p.hold_total += now - lease.granted_at
        p.ended += 1
        if p.n_parked and a.holder.id in p.parked:
            self._unpark(p, a.holder.id, now)
        if p.n_queued or p.n_parked:
            self._dispatch(p, now)

    def _abandon(self, w: Waiter) -> None:
        """The waiting coroutine was cancelled: give back whatever it holds or waits for."""
        if w.state == GRANTED:
            lease = w.lease  # (see Waiter.lease)
            event = w.event
            if self._native and not event.cancelled():
                lease = event.result()
            if lease is not None and lease.active:
                self._leases.remove(lease)
                now = self._clock()
                self._add_service(lease, -lease.charged, now)
                self._end(lease, now, lease.tokens, True)
        elif w.state == QUEUED or w.state == PARKED:
            p = self._pools[w.pool]
            p.unlink(w)
            w.state = GONE
            self._dispatch(p, self._clock())

    # -- servicing ----------------------------------------------------------------------------
    def _service(self, now: float) -> None:
        for lease in self._leases.pop_expired(now):
            self._expire(lease, now)
        for p in self._pools.values():
            refill = p.refill_at
            if (refill is not None and refill <= now) or p.changes_due(now):
                p.refill_at = None
                self._dispatch(p, now)

    def _expire(self, lease: Lease, now: float) -> None:
        p = self._pools[lease.pool]
        p.expired += 1
        data: dict[str, Any] = {"holder": lease.holder, "pool": lease.pool,
                                "tokens": lease.tokens, "held_s": round(now - lease.granted_at, 3)}
        message = f"lease of {lease.holder} on {lease.pool} expired; capacity returned"
        if self._events is not None:
            self._events.emit("lease_expired", message, task_id=lease.holder, level="warning",
                              **data)
        else:
            _log.warning("lease_expired", message=message, **data)
        self._end(lease, now, lease.tokens, True)

    def _next_deadline(self) -> float:
        first = self._leases.next_expiry()
        deadline = math.inf if first is None else first
        for p in self._pools.values():
            aging = p.next_change()
            if aging is not None:
                deadline = min(deadline, aging)
            if p.refill_at is not None:
                deadline = min(deadline, p.refill_at)
        return deadline
