"""One budget scope's state: its limits, totals, reservations and alert thresholds passed.

:class:`ScopeState` is what :class:`~scheduler.budget._scopes.Scopes` keeps per scope
(task, session, day); :func:`worst_fraction` is the largest share of a limit any of a
task's scopes has used (what routing and replanning read before a call).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from scheduler.config import Limits
from scheduler.core import Totals, UsageEvent

Level = Literal["warning", "critical", "exceeded"]
#: Dimensions read from :class:`Totals` by attribute name.
COUNTED = (
    "tokens", "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens",
    "cost_usd", "file_edits", "shell_commands", "dangerous_commands",
)


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold crossed by one dimension of one scope (fired once per crossing)."""

    scope: str
    dimension: str
    level: Level
    used: float
    limit: float

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit else float("inf")


@dataclass(slots=True)
class ScopeState:
    """Limits, totals, reservations and fired alerts of one scope."""

    name: str
    limits: Limits
    totals: Totals = field(default_factory=Totals)
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    reserved_by_model: dict[str, int] = field(default_factory=dict)
    #: File edits and shell commands of operations under way (made when one is: most
    #: scopes never limit them).
    reserved_ops: dict[str, int] | None = None
    #: The thresholds passed, ``(dimension, level)``; made when one is (most tasks of a
    #: large run never pass one, and an empty set is 216 bytes per task).
    fired: set[tuple[str, Level]] | None = None
    started_at: float = 0.0
    #: Held atomically across processes on a shared store, like the session and the day
    #: (a task whose budget spans the store: a ``serve`` key).
    shared: bool = False
    #: On a store that versions its totals (Redis): the version of the shared totals
    #: ``totals`` were last taken from (0: none), and the highest version any of this
    #: process's own charges added to them since reached (see :meth:`charge`).
    version: int = 0
    charged_version: int = 0
    #: The records of budget people added for every process (``scheduler.control``'s
    #: ``fleet_budget``) already in ``limits``; made when one is.
    added: set[str] | None = None
    # what ``limits`` says per dimension, worked out once per Limits (a frozen model: a
    # new object whenever a limit changes) -- every call asks several times
    _caps_of: Limits | None = field(default=None, init=False, repr=False, compare=False)
    _caps: dict[str, float | None] = field(default_factory=lambda: _NO_CAPS, init=False,
                                           repr=False, compare=False)
    _limited: tuple[tuple[str, float], ...] = field(default=(), init=False, repr=False,
                                                   compare=False)

    def charge(self, event: UsageEvent, version: int) -> None:
        """Add this process's ``event`` to the totals; ``version``: the one the store's
        totals of this scope reached with it (0: not known, the event is added)."""
        if version:
            if version <= self.version:
                return  # the snapshot taken over (:meth:`adopt`) holds it already
            if version > self.charged_version:
                self.charged_version = version
        self.totals.add(event)

    def adopt(self, totals: Totals, version: int) -> None:
        """Take over the store's ``totals`` of this scope as of ``version`` -- every
        process's usage -- unless they are not newer than these, or older than one of
        this process's own charges added since (they would lose it; the next snapshot
        brings the other processes' usage).  A charge of this process that the snapshot
        holds but that is not added yet is then not added again (:meth:`charge`)."""
        if version > self.version and version >= self.charged_version:
            self.totals = totals.copy()
            self.version = version

    def load(self, totals: Totals, version: int) -> None:
        """Take ``totals`` read from the store as of ``version`` as this scope's (its
        first read: a task's start, a new day).  A store that versions them (0: one that
        does not, the read taken as it is) tells which of this process's charges the read
        holds: a charge added after it is not added again (:meth:`charge`)."""
        if not version or (version >= self.version and version >= self.charged_version):
            self.totals = totals
            self.version = version

    def used(self, dimension: str) -> float:
        if dimension.startswith("tokens:"):
            return self.totals.tokens_by_model.get(dimension[7:], 0)
        value: float = getattr(self.totals, dimension)
        return value

    def held(self, dimension: str) -> float:
        """What this process's calls and operations under way hold of ``dimension``."""
        if dimension.startswith("tokens:"):
            return self.reserved_by_model.get(dimension[7:], 0)
        return (self.reserved_tokens if dimension == "tokens"
                else self.reserved_cost if dimension == "cost_usd"
                else self.reserved_ops.get(dimension, 0) if self.reserved_ops else 0)

    def max_fraction(self) -> float:
        """The largest used ÷ limit over the dimensions limited above 0 (0 when none is):
        asked before every routed call and every status frame, so the totals are read
        here, not through :meth:`used` per dimension."""
        return worst_fraction((self,))

    def limit(self, dimension: str) -> float | None:
        return self._limits_now().get(dimension)

    def caps(self) -> Mapping[str, float | None]:
        """The limit of every dimension the limits name (read only)."""
        if self._caps_of is self.limits:  # the usual answer, without a frame more
            return self._caps
        return self._limits_now()

    def dimensions(self) -> Iterator[str]:
        """The dimensions the limits name (a limit of 0 too), per-model ones last."""
        return iter(self._limits_now())

    def limited(self) -> tuple[tuple[str, float], ...]:
        """``(dimension, limit)`` of every dimension with a limit above 0."""
        if self._caps_of is not self.limits:
            self._limits_now()
        return self._limited

    def _limits_now(self) -> dict[str, float | None]:
        if self._caps_of is not self.limits:
            lim = self.limits
            self._caps, self._limited = _caps_of(lim)
            self._caps_of = lim
        return self._caps


def worst_fraction(scopes: tuple[ScopeState, ...]) -> float:
    """The largest :meth:`ScopeState.max_fraction` of ``scopes`` (asked before every
    routed call: its loop here, not a call per scope)."""
    worst = 0.0
    for scope in scopes:
        if scope._caps_of is not scope.limits:
            scope._limits_now()
        totals = scope.totals
        for dim, lim in scope._limited:
            if dim.startswith("tokens:"):
                used: float = totals.tokens_by_model.get(dim[7:], 0)
            else:
                used = getattr(totals, dim)
            if used > worst * lim:
                worst = used / lim
    return worst


#: What each ``Limits`` says per dimension, and its dimensions limited above 0, by the
#: object's id (tasks of one type and complexity share their limits: their scopes share
#: these too, read only); the object is kept with them so its id is not reused.
_CAPS: dict[int, tuple[Limits, dict[str, float | None], tuple[tuple[str, float], ...]]] = {}
_CAPS_KEPT = 1024
_NO_CAPS: dict[str, float | None] = {}  # a scope's, until it first reads its limits


def _caps_of(lim: Limits) -> tuple[dict[str, float | None], tuple[tuple[str, float], ...]]:
    found = _CAPS.get(id(lim))
    if found is not None and found[0] is lim:
        return found[1], found[2]
    caps: dict[str, float | None] = {
        d: v for d in COUNTED if (v := getattr(lim, d)) is not None}
    caps.update((f"tokens:{m}", v) for m, v in lim.tokens_by_model.items())
    limited = tuple((d, v) for d, v in caps.items() if v)
    if len(_CAPS) >= _CAPS_KEPT:
        _CAPS.clear()  # bounded: limits raised for single tasks are new objects each time
    _CAPS[id(lim)] = (lim, caps, limited)
    return caps, limited
