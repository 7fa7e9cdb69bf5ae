"""A hypothesis state machine hammering the allocator (R5.3–R5.5 invariants).

Random acquire / settle / release / renew / cancel / clock jumps (lease expiry,
aging, refill) / holder crash / priority changes / capacity changes, with the
invariants checked after every step.  The allocator runs on trio in a blocking
portal with a MockClock that only moves when a rule jumps it.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import pytest
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scheduler.allocator import Allocator, Lease
from scheduler.allocator._pools import QUEUED
from scheduler.core import LeaseError
from tests._allocator_helpers import pool_config

HOLDERS = ["a", "b", "c", "d", "bg"]
CONFIG = pool_config(concurrent=4, tpm=2000, rpm=30, fairness_slack_tokens=1500)


@dataclass
class Request:
    holder: str
    tokens: int
    scope: anyio.CancelScope | None = None
    future: Future[None] | None = None
    lease: Lease | None = None
    error: BaseException | None = None
    done: bool = False


class AllocatorMachine(RuleBasedStateMachine):
    config = CONFIG

    def __init__(self) -> None:
        super().__init__()
        self.clock = trio.testing.MockClock()
        self._portal_cm = anyio.from_thread.start_blocking_portal(
            "trio", backend_options={"clock": self.clock})
        self.portal = self._portal_cm.__enter__()
        self.alloc = Allocator(self.config)
        self.alloc.register("bg", "background")
        self.service = self.portal.start_task_soon(self.alloc.run)
        self.requests: list[Request] = []
        self.live: list[Lease] = []
        self.seen: set[str] = set()
        self.new_grants: list[Lease] = []
        self.quiesce()

    # -- plumbing --------------------------------------------------------------------------
    def quiesce(self) -> None:
        self.portal.call(anyio.wait_all_tasks_blocked)
        for req in self.requests:
            if req.done and req.lease is not None and req.lease.id not in self.seen:
                self.seen.add(req.lease.id)
                self.live.append(req.lease)
        self.new_grants = [lease for lease in self.alloc._leases.all()
                           if lease.id not in self._before]
        self._before = {lease.id for lease in self.alloc._leases.all()}

    _before: set[str] = set()

    def pending(self) -> list[Request]:
        return [r for r in self.requests if not r.done]

    def teardown(self) -> None:
        for req in self.pending():
            if req.scope is not None:
                self.portal.call(req.scope.cancel)
        self.service.cancel()
        self._portal_cm.__exit__(None, None, None)

    # -- rules -----------------------------------------------------------------------------
    @rule(holder=st.sampled_from(HOLDERS), tokens=st.integers(0, 1500), calls=st.integers(1, 3))
    def acquire(self, holder: str, tokens: int, calls: int) -> None:
        req = Request(holder, tokens)

        async def go() -> None:
            try:
                with anyio.CancelScope() as scope:
                    req.scope = scope
                    req.lease = await self.alloc.acquire(holder, tokens=tokens, calls=calls)
            except LeaseError as exc:
                req.error = exc
            req.done = True

        self.requests.append(req)
        req.future = self.portal.start_task_soon(go)
        self.quiesce()

    @precondition(lambda self: bool(self.pending()))
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        req = data.draw(st.sampled_from(self.pending()))
        assert req.scope is not None
        self.portal.call(req.scope.cancel)
        self.quiesce()

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), fraction=st.floats(0, 1.2))
    def settle(self, data: st.DataObject, fraction: float) -> None:
        lease = data.draw(st.sampled_from(self.live))
        self.live.remove(lease)
        used = int(lease.tokens * min(fraction, 1.0))
        self._expect_lease_op(lease, lambda: self.alloc.settle(lease.id, used, holder=lease.holder))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.live))
        self.live.remove(lease)
        self._expect_lease_op(lease, lambda: self.alloc.release(lease.id))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.live))
        self._expect_lease_op(lease, lambda: self.alloc.renew(lease.id))

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), thief=st.sampled_from(HOLDERS))
    def foreign_settle_is_refused(self, data: st.DataObject, thief: str) -> None:
        lease = data.draw(st.sampled_from(self.live))
        if thief != lease.holder:
            self._expect_lease_op(lease, lambda: self.alloc.settle(lease.id, 0, holder=thief),
                                  refused=True)

    @rule(seconds=st.sampled_from([0.5, 5.0, 31.0, 120.0, 301.0]))
    def advance_clock(self, seconds: float) -> None:
        self.portal.call(self.clock.jump, seconds)
        self.quiesce()

    @rule(holder=st.sampled_from(HOLDERS))
    def crash(self, holder: str) -> None:
        self.portal.call(self.alloc.release_holder, holder)
        self.quiesce()

    @rule(holder=st.sampled_from(HOLDERS), fraction=st.floats(0, 1), blocking=st.booleans())
    def change_priority(self, holder: str, fraction: float, blocking: bool) -> None:
        self.portal.call(self.alloc.set_token_fraction, holder, fraction)
        self.portal.call(self.alloc.set_blocking, holder, blocking)
        self.quiesce()

    @rule(concurrent=st.integers(1, 6))
    def change_capacity(self, concurrent: int) -> None:
        self.portal.call(lambda: self.alloc.set_capacity("p", concurrent=concurrent))
        self.quiesce()

    def _expect_lease_op(self, lease: Lease, op: Any, refused: bool = False) -> None:
        def run() -> bool:
            active = lease.active
            try:
                op()
            except LeaseError:
                return False
            assert active and not refused, "an ended lease or a foreign holder was accepted"
            return True

        ok = self.portal.call(run)
        if not ok:
            assert refused or not lease.active
        self.quiesce()

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def invariants_hold(self) -> None:
        self.portal.call(self._check)

    def _check(self) -> None:
        alloc = self.alloc
        now = anyio.current_time()
        p = alloc._pools["p"]
        leases = [lease for lease in alloc._leases.all() if lease.pool == "p"]
        # Leases and capacity agree; capacity was never overrun by a grant.
        assert all(lease.active and lease.expires_at > now for lease in leases)
        assert p.in_use == sum(lease.calls for lease in leases)
        assert p.n_leases == len(leases)
        if self.new_grants:
            assert p.concurrent is None or p.in_use <= p.concurrent
        for bucket in (p.tpm, p.rpm):
            if bucket is not None:
                assert -1e-6 <= bucket.refill(now) <= bucket.capacity
        for holder in HOLDERS:
            mine = [lease for lease in leases if lease.holder == holder]
            assert p.held_tokens.get(holder, 0) == sum(lease.tokens for lease in mine)
            assert p.held_calls.get(holder, 0) == sum(lease.calls for lease in mine)
        # Waiting counts agree with the waiters.
        waiting = [w for h in alloc._holders.values() for w in h.waiting]
        assert p.n_queued + p.n_parked == len(waiting)
        assert p.n_queued == sum(1 for w in waiting if w.state == QUEUED)
        assert sum(p.waiting_by_holder.values()) == len(waiting)
        assert len([r for r in self.requests if not r.done]) == len(waiting)
        # No lost wake-up: the one to serve next cannot be served now.
        if p.n_queued:
            w = alloc._dispatcher.select(p)
            assert w is not None
            blocked_by_share = p.over_share(w.holder, w.tokens, w.calls) and p.others_waiting(
                w.holder)
            assert blocked_by_share or not p.fits(w.tokens, w.calls, now)
        elif p.n_parked:
            assert len(p.parked) > 1  # a lone over-share holder would have been served
        # Max share: nobody was granted past it while another holder waited.
        for lease in self.new_grants:
            if p.over_share(lease.holder, 0, 0):
                assert not p.others_waiting(lease.holder)


class SlotsOnlyMachine(AllocatorMachine):
    """The same on a pool limited by concurrent calls only (no buckets)."""

    config = pool_config(concurrent=4, fairness_slack_tokens=1500)


MACHINE_SETTINGS = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAllocatorMachine = pytest.mark.slow(AllocatorMachine.TestCase)
TestAllocatorMachine.settings = MACHINE_SETTINGS
TestSlotsOnlyMachine = pytest.mark.slow(SlotsOnlyMachine.TestCase)
TestSlotsOnlyMachine.settings = MACHINE_SETTINGS
