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


@dataclass(frozen=True, slots=True, eq=False)
class Caps:
    """What one :class:`Limits` says per dimension, read by every check, charge and
    routed call; worked out once and shared, read only, by the scopes with those limits
    (tasks of one type and complexity)."""

    limits: Limits | None
    #: The limit of every dimension the limits name (a limit of 0 too), per model last.
    of: dict[str, float | None]
    #: ``(dimension, limit)`` of those limited above 0 ...
    limited: tuple[tuple[str, float], ...]
    #: ... split into the :class:`Totals` attributes (``COUNTED`` order) and the per-model
    #: ones, ``(dimension, model, limit)``: the loops read no dimension's name.
    counted: tuple[tuple[str, float], ...]
    models: tuple[tuple[str, str, float], ...]
    #: A prompt, completion, cache-read or cache-write limit (checked at every model call).
    call: bool
    #: A per-model token limit (a limit of 0 too).
    per_model: bool
    #: ``cost_warning_usd`` ÷ ``cost_usd`` when both are set (above 0): the cost warning's
    #: own threshold.
    cost_warning: float | None


_NO_CAPS = Caps(None, {}, (), (), (), False, False, None)  # a scope's, until it reads them


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
    #: Every process's totals of a scope they all count, as the shared ledger last read
    #: them for a hold (read only; None: none read): the alerts count at least these
    #: (:meth:`seen`), since ``totals`` may hold only this process's usage (SQLite).
    fleet: Totals | None = None
    #: The records of budget people added for every process (``scheduler.control``'s
    #: ``fleet_budget``) already in ``limits``; made when one is.
    added: set[str] | None = None
    #: What ``limits`` says per dimension (:class:`Caps`), worked out once per Limits (a
    #: frozen model: a new object whenever a limit changes) -- every call asks several
    #: times; current while ``_caps.limits is limits``.
    _caps: Caps = field(default=_NO_CAPS, init=False, repr=False, compare=False)

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

    def seen(self, dimension: str) -> float:
        """:meth:`used`, or what every process used, when the ledger's last read says more
        (the threshold alerts' count, R3.1)."""
        used = self.used(dimension)
        fleet = self.fleet
        if fleet is None:
            return used
        other: float = (fleet.tokens_by_model.get(dimension[7:], 0)
                        if dimension.startswith("tokens:") else getattr(fleet, dimension))
        return other if other > used else used

    def held(self, dimension: str) -> float:
        """What this process's calls and operations under way hold of ``dimension``."""
        if dimension.startswith("tokens:"):
            return self.reserved_by_model.get(dimension[7:], 0)
        return (self.reserved_tokens if dimension == "tokens"
                else self.reserved_cost if dimension == "cost_usd"
                else self.reserved_ops.get(dimension, 0) if self.reserved_ops else 0)

    def max_fraction(self) -> float:
        """The largest used ÷ limit over the dimensions limited above 0 (0 when none is):
        asked before every status frame (see :func:`worst_fraction`)."""
        return worst_fraction((self,))

    def limit(self, dimension: str) -> float | None:
        return self.caps_now().of.get(dimension)

    def caps(self) -> Mapping[str, float | None]:
        """The limit of every dimension the limits name (read only)."""
        caps = self._caps
        return caps.of if caps.limits is self.limits else self.caps_now().of

    def dimensions(self) -> Iterator[str]:
        """The dimensions the limits name (a limit of 0 too), per-model ones last."""
        return iter(self.caps_now().of)

    def limited(self) -> tuple[tuple[str, float], ...]:
        """``(dimension, limit)`` of every dimension with a limit above 0."""
        return self.caps_now().limited

    def caps_now(self) -> Caps:
        """What the current limits say (hot paths read ``_caps`` first, when current)."""
        caps = self._caps
        if caps.limits is not self.limits:
            caps = self._caps = _caps_of(self.limits)
        return caps


def charge_each(event: UsageEvent, charged: list[tuple[ScopeState, int]]) -> None:
    """:meth:`ScopeState.charge` of ``event`` on each ``(scope, version)`` (every charge
    adds to three scopes or more: the event's fields are read once, in one frame).  A
    version below 0 marks a scope that holds the event already: it is not charged."""
    u = event.usage
    prompt, out, read = u.prompt_tokens, u.completion_tokens, u.cache_read_tokens
    write = u.cache_write_5m_tokens + u.cache_write_1h_tokens
    cost, edits, shell = event.cost_usd, event.file_edits, event.shell_commands
    dangerous, model, tokens = event.dangerous_commands, event.model, prompt + out + read + write
    for scope, version in charged:
        if version:
            if version <= scope.version:
                continue  # the snapshot taken over (:meth:`adopt`) holds it already
                # (or the read that loaded the scope, a version below 0)
            if version > scope.charged_version:
                scope.charged_version = version
        t = scope.totals  # ``Totals.add``, without its frame
        t.prompt_tokens += prompt
        t.completion_tokens += out
        t.cache_read_tokens += read
        t.cache_write_tokens += write
        t.cost_usd += cost
        t.file_edits += edits
        t.shell_commands += shell
        t.dangerous_commands += dangerous
        if model:
            t.calls += 1
            by_model = t.tokens_by_model
            by_model[model] = by_model.get(model, 0) + tokens


def worst_fraction(scopes: tuple[ScopeState, ...]) -> float:
    """The largest :meth:`ScopeState.max_fraction` of ``scopes`` (asked before every
    routed call: its loop here, not a call per scope)."""
    worst = 0.0
    for scope in scopes:
        caps = scope._caps
        if caps.limits is not scope.limits:
            caps = scope.caps_now()
        totals = scope.totals
        for dim, lim in caps.counted:
            used: float = getattr(totals, dim)
            if used > worst * lim:
                worst = used / lim
        for _, model, lim in caps.models:
            used = totals.tokens_by_model.get(model, 0)
            if used > worst * lim:
                worst = used / lim
    return worst


#: The :class:`Caps` of each ``Limits`` by the object's id (the object is kept in them
#: so its id is not reused).
_CAPS: dict[int, Caps] = {}
_CAPS_KEPT = 1024
_CALL = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens")


def _caps_of(lim: Limits) -> Caps:
    found = _CAPS.get(id(lim))
    if found is not None and found.limits is lim:
        return found
    caps: dict[str, float | None] = {
        d: v for d in COUNTED if (v := getattr(lim, d)) is not None}
    counted = tuple((d, v) for d, v in caps.items() if v)
    models = tuple((f"tokens:{m}", m, v) for m, v in lim.tokens_by_model.items() if v)
    caps.update((f"tokens:{m}", v) for m, v in lim.tokens_by_model.items())
    warn = (lim.cost_warning_usd / lim.cost_usd
            if lim.cost_warning_usd and lim.cost_usd else None)
    found = Caps(lim, caps, counted + tuple((d, v) for d, _, v in models), counted, models,
                 any(d in caps for d in _CALL), bool(lim.tokens_by_model), warn)
    if len(_CAPS) >= _CAPS_KEPT:
        _CAPS.clear()  # bounded: limits raised for single tasks are new objects each time
    _CAPS[id(lim)] = found
    return found
