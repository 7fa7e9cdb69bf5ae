"""Pool internals of the allocator: capacities, holders' accounts and the share window.

Private to the allocator.  A pool has up to three capacities: tokens per
minute and requests per minute (refilling buckets) and concurrent calls (slots
held until a lease ends).  Its waiting queue is the :class:`WaitQueue` it
extends; what each holder has in it is an :class:`Account`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Final

from scheduler.allocator._records import GONE, GRANTED, PARKED, QUEUED, Account, Holder, Waiter
from scheduler.allocator._waitqueue import WaitQueue
from scheduler.config import PoolConfig
from scheduler.core import AllocationError

#: Weight of one ended lease in the average hold time (see :attr:`Pool.avg_hold_s`).
_HOLD_EWMA = 0.1
#: The shortest wait for a bucket refill (see :meth:`Pool.refill_time`).
_MIN_REFILL_WAIT_S = 1e-6

__all__ = ["GONE", "GRANTED", "PARKED", "QUEUED", "UNSET", "Account", "Bucket", "Holder",
           "Pool", "Unset", "Waiter"]


class Unset(Enum):
    UNSET = "unset"


#: "Leave this capacity as it is" for :meth:`Pool.change_capacity`.
UNSET: Final = Unset.UNSET


@dataclass(slots=True)
class Bucket:
    """A per-minute capacity refilling continuously; the level may go negative (debt)."""

    capacity: float
    level: float
    last: float | None = None

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> float:
        last = self.last
        if last is not None and now > last and self.level < self.capacity:
            self.level = min(self.capacity, self.level + (now - last) * self.capacity / 60.0)
        self.last = now
        return self.level

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def time_to(self, amount: float) -> float:
        """Seconds until the level reaches ``amount`` (0 when it already has)."""
        short = amount - self.level
        if short <= 0:
            return 0.0
        return short / self.rate if self.rate > 0 else math.inf  # a closed pool never refills


def _share(capacity: float | None, max_share: float) -> int | None:
    if capacity is None or capacity == 0:  # unlimited, or closed: requests keep their size
        return None
    return max(1, math.floor(capacity * max_share))


class Pool(WaitQueue):
    """Capacities, accounts and the waiting queue of one provider / model group."""

    __slots__ = (
        "_avg_hold", "_hold_seen", "concurrent", "decay_at", "decay_step", "ended",
        "expired", "grants", "hold_total", "in_use", "max_calls", "max_share_fraction",
        "max_tokens", "name", "recent_all", "recent_at", "recent_bg", "refill_at", "rpm",
        "slot_cap", "slots_only", "tpm",
    )

    def __init__(
        self, name: str, config: PoolConfig, max_share: float, window_s: float = 60.0,
        *, track_fair: bool = True, quantum: float, level_quantum: float,
    ) -> None:
        super().__init__(track_fair=track_fair, quantum=quantum, level_quantum=level_quantum)
        self.name = name
        self.max_share_fraction = max_share
        self.tpm: Bucket | None = None
        self.rpm: Bucket | None = None
        self.concurrent: int | None = None
        #: ``concurrent`` as an int for the hot path (``sys.maxsize``: unlimited).
        self.slot_cap = sys.maxsize
        self.max_tokens: int | None = None
        self.max_calls: int | None = None
        #: True when only ``concurrent`` limits the pool (no buckets, no max share on tokens).
        self.slots_only = False
        self.in_use = 0
        self.set_capacity(config.tokens_per_minute, config.requests_per_minute, config.concurrent)
        self.refill_at: float | None = None
        # Decayed service window for class shares, and statistics.
        self.recent_all = 0.0
        self.recent_bg = 0.0
        self.recent_at = -math.inf
        #: Decay the share window in steps of 1/16 of it (cheap on the hot path), next at
        #: ``decay_at``.
        self.decay_step = window_s * 0.0625
        self.decay_at = -math.inf
        #: Seconds held, summed over every ended lease (see :attr:`avg_hold_s`).
        self.hold_total = 0.0
        self._hold_seen: tuple[int, float] = (0, 0.0)
        self._avg_hold = 0.0
        self.ended = 0
        self.grants = 0
        self.expired = 0

    # -- capacity ---------------------------------------------------------------------------
    def set_capacity(self, tpm: int | None, rpm: int | None, concurrent: int | None) -> None:
        self.tpm = _resize(self.tpm, tpm)
        self.rpm = _resize(self.rpm, rpm)
        self.concurrent = concurrent
        self.slot_cap = sys.maxsize if concurrent is None else concurrent
        self.max_tokens = _share(tpm, self.max_share_fraction)
        self.max_calls = _share(concurrent, self.max_share_fraction)
        self.slots_only = self.tpm is None and self.rpm is None

    def change_capacity(
        self, tpm: int | Unset | None, rpm: int | Unset | None, concurrent: int | Unset | None,
        now: float | None = None, credit: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """Validate and set new capacities (``UNSET``: keep), add ``credit`` (tokens,
        requests) to the buckets, and cut waiting requests to the new max share (a grant
        checks only holders that hold).

        The buckets are first refilled to ``now`` at their old rate: the time since their
        last refill must not be credited at a new, higher one (a closed pool reopening
        would otherwise start with the tokens of the whole time it was closed).
        """
        for bucket in (self.tpm, self.rpm):
            if bucket is not None and now is not None:
                bucket.refill(now)
        tokens = _pick(tpm, self.tpm.capacity if self.tpm else None)
        requests = _pick(rpm, self.rpm.capacity if self.rpm else None)
        conc = _pick(concurrent, self.concurrent)
        # a per-minute capacity of 0 closes the pool (a global slice not granted yet)
        for name, per_minute in (("tokens_per_minute", tokens), ("requests_per_minute", requests)):
            if per_minute is not None and per_minute < 0:
                raise AllocationError(
                    f"pool {self.name!r}: {name} must be >= 0, got {per_minute}")
        if conc is not None and conc <= 0:
            raise AllocationError(f"pool {self.name!r}: capacities must be > 0, got {conc}")
        self.set_capacity(tokens, requests, conc)
        for bucket, extra in zip((self.tpm, self.rpm), credit, strict=True):
            if bucket is not None and extra > 0:
                bucket.give(extra)
        for a in self.accounts.values():
            for w in a.waiters:
                w.tokens, w.calls = self.clamp(w.tokens, w.calls)

    def clamp(self, tokens: int, calls: int) -> tuple[int, int]:
        """A request above the max share is cut to the max share (R5.5)."""
        if self.max_tokens is not None and tokens > self.max_tokens:
            tokens = self.max_tokens
        if self.max_calls is not None and calls > self.max_calls:
            calls = self.max_calls
        return tokens, calls

    def fits(self, tokens: int, calls: int, now: float) -> bool:
        if self.concurrent is not None and self.in_use + calls > self.concurrent:
            return False
        tpm = self.tpm
        if tpm is not None and tpm.refill(now) < tokens:
            return False
        rpm = self.rpm
        return rpm is None or rpm.refill(now) >= calls

    def refill_time(self, tokens: int, calls: int, now: float) -> float | None:
        """When the buckets will hold ``tokens``/``calls`` (``None``: they already do)."""
        wait = 0.0
        if self.tpm is not None:
            wait = max(wait, self.tpm.time_to(tokens))
        if self.rpm is not None:
            wait = max(wait, self.rpm.time_to(calls))
        if wait <= 0:
            return None
        # never "now" again: a level short by a rounding error (1010.9999… of 1011) would
        # otherwise wake the servicing task at the same instant forever
        return now + max(wait, _MIN_REFILL_WAIT_S)

    def over_share(self, holder: str, tokens: int, calls: int) -> bool:
        """Would this grant take ``holder`` past the max share of some dimension?"""
        return self.exceeds_share(self.accounts.get(holder), tokens, calls)

    def exceeds_share(self, a: Account | None, tokens: int, calls: int) -> bool:
        """:meth:`over_share` for an account (``None``: a holder that holds nothing)."""
        held_tokens, held_calls = (0, 0) if a is None else (a.held_tokens, a.held_calls)
        mt = self.max_tokens
        if mt is not None and held_tokens + tokens > mt:
            return True
        mc = self.max_calls
        return mc is not None and held_calls + calls > mc

    def others_waiting(self, holder: str) -> bool:
        return self.waits_besides(self.accounts.get(holder))

    def waits_besides(self, a: Account | None) -> bool:
        """Do requests of other holders than ``a``'s wait here?"""
        return self.n_queued + self.n_parked > (0 if a is None else a.waiting)

    @property
    def avg_hold_s(self) -> float:
        """How long recent leases were held, on average (0 before the first one ends).

        The hot path only sums hold times; this folds the leases ended since the
        last read into an exponentially weighted average (each ended lease
        weighs ``_HOLD_EWMA``, so ten or more replace the old value).
        """
        seen_n, seen_total = self._hold_seen
        n = self.ended - seen_n
        if n > 0:
            mean = (self.hold_total - seen_total) / n
            self._avg_hold = mean if seen_n == 0 else (
                self._avg_hold + min(1.0, n * _HOLD_EWMA) * (mean - self._avg_hold))
            self._hold_seen = (self.ended, self.hold_total)
        return self._avg_hold

    @property
    def n_leases(self) -> int:
        """Live leases on this pool (every grant ends once: settled, released or expired)."""
        return self.grants - self.ended

    # -- views by holder (statistics and tests; the hot path reads the accounts) -------------
    @property
    def held_tokens(self) -> dict[str, int]:
        return {h: a.held_tokens for h, a in self.accounts.items() if a.held_tokens}

    @property
    def held_calls(self) -> dict[str, int]:
        return {h: a.held_calls for h, a in self.accounts.items() if a.held_calls}

    @property
    def waiting_by_holder(self) -> dict[str, int]:
        return {h: a.waiting for h, a in self.accounts.items() if a.waiting}

    @property
    def counters(self) -> dict[str, float]:
        return {h: a.counter for h, a in self.accounts.items()}

    # -- class share window -----------------------------------------------------------------
    def decay(self, now: float, window_s: float) -> None:
        """Age the class-share window (callers do it once per ``decay_step``)."""
        f = math.exp((self.recent_at - now) / window_s)
        self.recent_all *= f
        self.recent_bg *= f
        self.recent_at = now
        self.decay_at = now + self.decay_step


def _pick(value: int | Unset | None, current: float | int | None) -> int | None:
    if value is UNSET:
        return None if current is None else int(current)
    return value


def _resize(bucket: Bucket | None, capacity: int | None) -> Bucket | None:
    if capacity is None:
        return None
    if bucket is None:
        return Bucket(float(capacity), float(capacity))
    bucket.capacity = float(capacity)
    bucket.level = min(bucket.level, bucket.capacity)
    return bucket
