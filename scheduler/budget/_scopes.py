"""The nested scopes usage is charged to: task ⊂ session ⊂ day (R1.2, R1.5, R3.1).

A :class:`ScopeState` holds one scope's limits, totals, in-flight reservations
and the alert thresholds it has already passed; :class:`Scopes` holds every
scope of one session, loads their totals from the store, adds charged events
to them and reports each threshold crossing once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from scheduler.budget._profile import TaskProfile, day_limits
from scheduler.config import Limits, VibeConfig
from scheduler.core import Totals, UsageEvent, VibeEngineError, WallClock
from scheduler.store import Store, session_task_totals

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
    fired: set[tuple[str, Level]] = field(default_factory=set)
    started_at: float = 0.0
    #: Held atomically across processes on a shared store, like the session and the day
    #: (a task whose budget spans the store: a ``serve`` key).
    shared: bool = False
    # what ``limits`` says per dimension, worked out once per Limits (a frozen model: a
    # new object whenever a limit changes) -- every call asks several times
    _caps_of: Limits | None = field(default=None, init=False, repr=False, compare=False)
    _caps: dict[str, float | None] = field(default_factory=dict, init=False, repr=False,
                                           compare=False)
    _limited: tuple[tuple[str, float], ...] = field(default=(), init=False, repr=False,
                                                   compare=False)

    def used(self, dimension: str) -> float:
        if dimension.startswith("tokens:"):
            return self.totals.tokens_by_model.get(dimension[7:], 0)
        value: float = getattr(self.totals, dimension)
        return value

    def limit(self, dimension: str) -> float | None:
        return self._limits_now().get(dimension)

    def caps(self) -> Mapping[str, float | None]:
        """The limit of every dimension the limits name (read only)."""
        return self._limits_now()

    def dimensions(self) -> Iterator[str]:
        """The dimensions the limits name (a limit of 0 too), per-model ones last."""
        return iter(self._limits_now())

    def limited(self) -> tuple[tuple[str, float], ...]:
        """``(dimension, limit)`` of every dimension with a limit above 0."""
        self._limits_now()
        return self._limited

    def _limits_now(self) -> dict[str, float | None]:
        if self._caps_of is not self.limits:
            lim = self.limits
            caps: dict[str, float | None] = {
                d: v for d in COUNTED if (v := getattr(lim, d)) is not None}
            caps.update((f"tokens:{m}", v) for m, v in lim.tokens_by_model.items())
            self._caps, self._caps_of = caps, lim
            self._limited = tuple((d, v) for d, v in caps.items() if v)
        return self._caps


@dataclass(slots=True)
class TaskEntry:
    """A started task: its profile, its scope and how many model calls it made."""

    profile: TaskProfile
    agent: str
    scope: ScopeState
    actions: int = 0
    status: str = "running"
    #: Loop time of the last ``usage.json`` write, or of the first charge (a flush
    #: rewrites the file an interval after either).
    usage_written_at: float = float("-inf")
    #: Charged since ``usage.json`` was last written (or never written).
    usage_dirty: bool = True
    #: Charged at least once (only then does a periodic flush write its file).
    usage_charged: bool = False
    #: The task whose scope encloses this one (a ``serve`` key of its grouped tasks):
    #: charged with this task's use and checked before its calls (R1.2).
    parent: str | None = None


class Scopes:
    """Every scope of one session: its tasks, the session itself and the days it spans."""

    def __init__(
        self, store: Store, config: VibeConfig, *, session_id: str, wall: WallClock,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._config = config
        self._session_id = session_id
        self._wall = wall
        #: The wall clock's date; ``today()`` when it has one (cheaper than ``now()``).
        self.today: Callable[[], date] = getattr(wall, "today", None) or (
            lambda: wall.now().date())
        self._clock = clock
        self.session = ScopeState(f"session:{session_id}", config.budgets.session)
        self.days: dict[str, ScopeState] = {}
        self._last_day: date | None = None  # the day :meth:`day` answered last, and its scope
        self._last_day_state = self.session
        #: Days whose totals were read from the store (a day in ``days`` but not here is a
        #: placeholder: midnight passed and nothing async has loaded it yet).
        self._loaded: set[str] = set()
        self.tasks: dict[str, TaskEntry] = {}
        self._continued = True  # until open() finds the session new

    # -- loading -------------------------------------------------------------------

    async def open(self) -> None:
        """Load the session's and today's totals from the store (R1.5)."""
        self.session.totals = await self._store.totals(self.session.name)
        # a session with no usage yet has none for any of its tasks: skip reading events
        self._continued = self.session.totals != Totals()
        self.crossings(self.session)  # thresholds passed before a restart fired then (R3.1)
        await self.ensure_day(self.today())

    async def ensure_day(self, day: date) -> ScopeState:
        """The scope of ``day`` with the totals every run recorded for it (R1.5): a day
        that began while this process ran starts from what others already spent."""
        state = self.day(day)
        key = day.isoformat()
        if key not in self._loaded:
            # its reservations (a placeholder's) stay; its totals come from the store
            state.totals = await self._store.totals(state.name)
            self._loaded.add(key)
            self.crossings(state)  # already passed: fired by an earlier process
        return state

    def day(self, day: date | None = None) -> ScopeState:
        """The scope of ``day`` (default today); one not loaded yet is a placeholder that
        :meth:`ensure_day` fills in before the next reservation or charge."""
        when = day or self.today()
        if when == self._last_day:  # asked several times per call: same answer all day
            return self._last_day_state
        key = when.isoformat()
        state = self.days.get(key)
        if state is None:
            state = ScopeState(f"day:{key}", day_limits(self._config, when))
            self.days[key] = state
        self._last_day, self._last_day_state = when, state
        return state

    async def start_task(self, task_id: str, profile: TaskProfile, agent: str,
                         span: str = "session", parent: str | None = None) -> None:
        """Register a task; a task this session ran before (a resumed session) continues
        from what it used in this session -- never from an earlier session's use.  With
        ``span="store"`` its budget counts every session's use of the id, and a shared
        store holds it across processes.  A ``parent`` (a started task whose id is the
        task id's part before ``/``, so the stores charge it too) encloses the task:
        task ⊂ parent ⊂ session ⊂ day."""
        if parent is not None:
            self.task(parent)  # started first: its totals already hold this task's use
        scope = ScopeState(f"task:{task_id}", profile.limits, started_at=self._clock(),
                           shared=span == "store")
        if scope.shared:
            scope.totals = await self._store.totals(scope.name)
        elif self._continued:
            scope.totals = await session_task_totals(self._store, self._session_id, task_id)
        self.crossings(scope)  # a resumed task's passed thresholds fired in its earlier run
        self.tasks[task_id] = TaskEntry(profile, agent, scope, actions=scope.totals.calls,
                                        parent=parent)
        await self.ensure_day(self.today())

    def task(self, task_id: str) -> ScopeState:
        try:
            return self.tasks[task_id].scope
        except KeyError:
            raise VibeEngineError(f"unknown task {task_id!r}: call start_task first") from None

    def of_task(self, task_id: str) -> tuple[ScopeState, ...]:
        """The task's own scope, its parent's (if any), the session and today, innermost
        first."""
        parent = self.tasks[task_id].parent if task_id in self.tasks else None
        if parent is None:
            return (self.task(task_id), self.session, self.day())
        return (self.task(task_id), self.task(parent), self.session, self.day())

    def named(self, task_id: str, name: str) -> ScopeState:
        """The scope ``name`` of ``task_id`` (one of the names a reservation holds)."""
        if name == f"task:{task_id}":
            return self.task(task_id)
        if name.startswith("task:"):  # the task's parent
            return self.task(name[5:])
        if name.startswith("session:"):
            return self.session
        return self.days[name[4:]]

    # -- charging ------------------------------------------------------------------

    async def add(self, event: UsageEvent) -> list[Crossing]:
        """Add a recorded event to each of its scopes; return the new threshold crossings."""
        entry = self.tasks.get(event.task_id)
        touched: list[ScopeState] = []
        if entry is not None:
            entry.scope.totals.add(event)
            if event.model:
                entry.actions += 1
            touched.append(entry.scope)
            parent = self.tasks.get(entry.parent) if entry.parent is not None else None
            if parent is not None:
                parent.scope.totals.add(event)
                if event.model:
                    parent.actions += 1
                touched.append(parent.scope)
        if event.session_id == self._session_id:
            self.session.totals.add(event)
            touched.append(self.session)
        if event.day in self._loaded:
            day = self.days[event.day]
            day.totals.add(event)
        else:  # first event of a new day: the totals loaded now include it (recorded)
            day = await self.ensure_day(date.fromisoformat(event.day))
        touched.append(day)
        return [c for s in touched for c in self.crossings(s)]

    # -- thresholds (R3.1) ---------------------------------------------------------

    def _thresholds(self, scope: ScopeState, dim: str) -> dict[Level, float]:
        a = self._config.alerts
        t: dict[Level, float] = {"warning": a.warning, "critical": a.critical,
                                 "exceeded": a.exceeded}
        if dim == "cost_usd" and scope.limits.cost_warning_usd and scope.limits.cost_usd:
            t["warning"] = min(scope.limits.cost_warning_usd / scope.limits.cost_usd, a.critical)
        return t

    def crossings(self, scope: ScopeState) -> list[Crossing]:
        """Thresholds ``scope`` has passed and not reported yet (marks them reported)."""
        out: list[Crossing] = []
        for dim, lim in scope.limited():
            out += self._fire(scope, dim, scope.used(dim), lim)
        return out

    def time_crossings(self, task_id: str) -> list[Crossing]:
        """Threshold crossings of the task's wall-time budget, as of now."""
        scope = self.task(task_id)
        lim = scope.limits.time_s
        if not lim:
            return []
        return self._fire(scope, "time_s", self._clock() - scope.started_at, lim)

    def _fire(self, scope: ScopeState, dim: str, used: float, lim: float) -> list[Crossing]:
        a, limits = self._config.alerts, scope.limits
        low = min(a.warning, a.critical, a.exceeded)
        if dim == "cost_usd" and limits.cost_warning_usd and limits.cost_usd:
            low = min(low, limits.cost_warning_usd / limits.cost_usd)
        if used < lim * low:
            return []  # below every threshold: the usual answer (each charge, each scope)
        out: list[Crossing] = []
        for level, frac in self._thresholds(scope, dim).items():
            if used >= lim * frac and (dim, level) not in scope.fired:
                scope.fired.add((dim, level))
                out.append(Crossing(scope.name, dim, level, used, lim))
        return out

    def raise_limits(self, scope: ScopeState, extra: Limits) -> None:
        """Add to a scope's limits (a person added budget) and re-arm passed thresholds."""
        data = scope.limits.model_dump()
        for name in extra.model_fields_set:
            add = getattr(extra, name)
            if name == "tokens_by_model":
                merged = dict(data["tokens_by_model"])
                for m, v in add.items():
                    merged[m] = merged.get(m, 0) + v
                data[name] = merged
            elif add is not None:
                data[name] = (data[name] or 0) + add
        warn, cost = scope.limits.cost_warning_usd, scope.limits.cost_usd
        if warn and cost and data["cost_usd"] and "cost_warning_usd" not in extra.model_fields_set:
            data["cost_warning_usd"] = round(data["cost_usd"] * warn / cost, 6)  # same fraction
        scope.limits = Limits.model_validate(data)
        for dim, level in list(scope.fired):
            lim = scope.limit(dim) if dim != "time_s" else scope.limits.time_s
            used = scope.used(dim) if dim != "time_s" else self._clock() - scope.started_at
            if lim and used < lim * self._thresholds(scope, dim)[level]:
                scope.fired.discard((dim, level))
