"""The nested scopes usage is charged to: task ⊂ session ⊂ day (R1.2, R1.5, R3.1).

A task with a ``day_budget`` (a ``serve`` key) also has a scope per calendar day,
between it and the session: task ⊂ parent ⊂ the (parent) task's day ⊂ session ⊂ day.

A :class:`ScopeState` holds one scope's limits, totals, in-flight reservations and the
alert thresholds it has already passed; :class:`Scopes` holds every scope of one
session, loads their totals from the store, adds charged events to them and reports
each threshold crossing once.
"""

from __future__ import annotations

import contextlib
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import anyio

from scheduler.budget._profile import TaskProfile, day_limits
from scheduler.budget._scope_state import Crossing, ScopeState, charge_each
from scheduler.budget._thresholds import Thresholds
from scheduler.config import VibeConfig
from scheduler.core import (
    StoreError,
    StoreUnavailableError,
    Totals,
    UsageEvent,
    VibeEngineError,
    WallClock,
)
from scheduler.core._clock import wall_seconds
from scheduler.store import Store, scopes_of, session_task_totals, task_day_scope
from scheduler.store._base import DAY_BEGUN, latest_day_begun


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
    #: The task whose per-day budget this task's use counts toward: itself with a
    #: ``day_budget``, else its parent's; None for none.
    day_root: str | None = None
    #: Today's per-day scope when this task is its own ``day_root`` (its file shows it).
    day_scope: ScopeState | None = None
    #: A task with neither parent nor per-day scope: its scopes as of ``held[-1]``'s day,
    #: and their names -- one pair per task, not per call (every call waiting for a
    #: lease holds its reservation's).
    held: tuple[ScopeState, ...] | None = field(default=None, repr=False)
    held_names: tuple[str, ...] = field(default=(), repr=False)


class Scopes:
    """Every scope of one session: its tasks, the session itself and the days it spans."""

    def __init__(
        self, store: Store, config: VibeConfig, *, session_id: str, wall: WallClock,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        #: The store's read of a scope's totals with their version (Redis), or None.
        self._read_versioned = getattr(store, "totals_with_version", None)
        self._config = config
        self._session_id = session_id
        #: The wall clock's date; ``today()`` when it has one (cheaper than ``now()``).
        self._wall_today: Callable[[], date] = getattr(wall, "today", None) or (
            lambda: wall.now().date())
        #: The wall clock's date and the seconds it holds for (``SystemWallClock``), or None.
        self._wall_window: Callable[[], tuple[date, float, float]] | None = getattr(
            wall, "day_window", None)
        #: The latest day :meth:`today` answered, or the store says the fleet reached.
        self._latest = date.min
        #: What :meth:`today` answered last, and the :data:`wall_seconds` it holds for.
        self._today, self._today_key = date.min, ""
        self._today_from = self._today_to = 0.0
        #: The zone they are local to: a ``time.tzset()`` replaces it (the day is read anew).
        self._zone = _time.tzname
        self._clock = clock
        self.session = ScopeState(f"session:{session_id}", config.budgets.session)
        self.days: dict[str, ScopeState] = {}
        self._last_day: date | None = None  # the day :meth:`day` answered last, and its scope
        self._last_day_state = self.session
        #: Days whose totals were read from the store (a day in ``days`` but not here is a
        #: placeholder: midnight passed and nothing async has loaded it yet).
        self._loaded: set[str] = set()
        self._ready_day: date | None = None  # a day in ``_loaded``: the one asked last
        #: Scopes whose totals are being read, by their ``_loaded`` key: set when read.
        self._loading: dict[str, anyio.Event] = {}
        self.tasks: dict[str, TaskEntry] = {}
        #: Per-day scopes of tasks with a ``day_budget``, by scope name; like ``days``, a
        #: name not in ``_loaded`` is a placeholder whose totals are not read yet.
        self.task_days: dict[str, ScopeState] = {}
        self._continued = True  # until open() finds the session new
        self._thresholds = Thresholds(config, clock)
        #: Thresholds ``scope`` passed and not reported yet (marks them reported).
        self.crossings = self._thresholds.crossings
        #: Add to a scope's limits (a person added budget), re-arming passed thresholds.
        self.raise_limits = self._thresholds.raise_limits

    def today(self) -> date:
        """The wall clock's date, never one before a day already answered: a wall clock set
        back across midnight (an NTP correction) must not reopen a day that is over -- its
        budget and pauses were settled when it ended (R1.2, R3.4)."""
        if self._today_from <= wall_seconds() < self._today_to and _time.tzname is self._zone:
            return self._today
        if self._wall_window is not None:
            self._zone = _time.tzname
            day, self._today_from, self._today_to = self._wall_window()
        else:
            day = self._wall_today()
        if day < self._latest:
            day = self._latest
        self._latest = day
        if day != self._today:
            self._today, self._today_key = day, day.isoformat()
        return day

    def today_key(self) -> str:
        """:meth:`today` as an ISO date (``YYYY-MM-DD``), what records name."""
        if self._today_from <= wall_seconds() < self._today_to and _time.tzname is self._zone:
            return self._today_key
        self.today()
        return self._today_key

    async def catch_up(self) -> date:
        """Take the latest day any process on the store began as the earliest :meth:`today`
        answers (and return today): a process restarted, or on a clock behind the fleet's,
        does not reopen a day the others closed (nor follows a clock far ahead)."""
        with contextlib.suppress(StoreError):  # unreadable: the day as this process has it
            begun = await latest_day_begun(self._store, self._wall_today())
            if begun is not None:
                self._latest = max(self._latest, begun)
                self._today_to = 0.0  # today() answers no day before it from now on
        return self.today()

    async def ensure_shown(self) -> None:
        """Read today's totals (the day's, each started task's per-day scope's) if not yet:
        a day begun while nothing was charged here shows what every process spent on it."""
        await self.ensure_day(self.today())
        for task_id, entry in list(self.tasks.items()):
            if entry.day_root == task_id:
                await self.ensure_task_day(task_id)

    # -- loading -------------------------------------------------------------------

    async def open(self) -> None:
        """Load the session's and today's totals from the store (R1.5)."""
        self.session.load(*await self._read(self.session.name))
        # a session with no usage yet has none for any of its tasks: skip reading events
        self._continued = self.session.totals != Totals()
        self.crossings(self.session)  # thresholds passed before a restart fired then (R3.1)
        await self.catch_up()
        await self.ensure_day(self.today())

    async def _read(self, name: str) -> tuple[Totals, int]:
        """The store's totals of scope ``name`` and their version (0: not versioned)."""
        if self._read_versioned is None:
            return await self._store.totals(name), 0
        totals, version = await self._read_versioned(name)
        return totals, version

    async def ensure_day(self, day: date) -> ScopeState:
        """The scope of ``day`` with the totals every run recorded for it (R1.5): a day
        that began while this process ran starts from what others already spent."""
        state, key = self.day(day), day.isoformat()
        if key not in self._loaded:
            await self._load(key, state)
            if day >= self._latest:  # not a past day read to settle a call it admitted
                await self._store.put_state(DAY_BEGUN, key, {"session": self._session_id})
        return state

    async def _load(self, key: str, state: ScopeState) -> None:
        """Read ``state``'s totals from the store once (``key``: its entry in ``_loaded``);
        its reservations (a placeholder's) stay.  One read per scope at a time: a second
        read ending after a charge was recorded and added would hold that charge twice.
        A charge of this process recorded while the read is under way is counted once
        where the store versions its totals (:meth:`ScopeState.load`)."""
        while key not in self._loaded:
            reading = self._loading.get(key)
            if reading is not None:
                await reading.wait()
                continue
            done = self._loading[key] = anyio.Event()
            try:
                state.load(*await self._read(state.name))
                self._loaded.add(key)
            finally:
                del self._loading[key]
                done.set()
            self.crossings(state)  # already passed: fired by an earlier process

    def ready(self, event: UsageEvent) -> bool:
        """Whether the per-day scopes ``event`` is charged to here have their totals."""
        if event.day not in self._loaded:
            return False
        return not event.day_scope or event.task_id not in self.tasks or (
            task_day_scope(event.day_scope, event.day) in self._loaded)

    async def load_for(self, event: UsageEvent) -> None:
        """Read the totals of ``event``'s per-day scopes before it is recorded (midnight
        passed): a read made after would hold it, and a charge recorded meanwhile by
        another call would then be added to totals that already hold it."""
        when = date.fromisoformat(event.day)
        await self.ensure_day(when)
        if event.day_scope and event.task_id in self.tasks:
            await self.ensure_task_day(event.day_scope, when)

    def checked_day(self) -> str:  # the ISO date of a check just made (:meth:`of_task`)
        return self._last_day_state.name[4:] if self._last_day else self.today_key()

    def ready_today(self, task_id: str) -> bool:
        """Whether today's totals were read for ``task_id``: the day's, and its per-day
        scope's when it has one (after midnight, before anything is checked against them)."""
        today = (self._today if self._today_from <= wall_seconds() < self._today_to
                 and _time.tzname is self._zone else self.today())  # no frame, usually
        if today != self._ready_day and not self._is_loaded(today):
            return False
        entry = self.tasks.get(task_id)
        root = entry.day_root if entry is not None else None
        return root is None or task_day_scope(root, self._today_key) in self._loaded

    async def ensure_today(self, task_id: str) -> None:
        """Read today's totals for ``task_id`` if not read yet (see :meth:`ready_today`)."""
        await self.ensure_day(self.today())
        await self.ensure_task_day(task_id)

    def _is_loaded(self, day: date) -> bool:
        if day.isoformat() not in self._loaded:
            return False
        self._ready_day = day
        return True

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

    def task_day(self, task_id: str, day: date | None = None) -> ScopeState | None:
        """The per-day scope of ``day`` (default today) that ``task_id``'s use counts
        toward, or None; one not loaded yet is a placeholder (see :meth:`ensure_task_day`)."""
        entry = self.tasks.get(task_id)
        root = entry.day_root if entry is not None else None
        if root is None:
            return None
        name, owner = task_day_scope(root, (day or self.today()).isoformat()), self.tasks[root]
        state = self.task_days.get(name)
        if state is None:
            limits = owner.profile.day_limits
            assert limits is not None  # a day_root has a day_budget
            state = ScopeState(name, limits, shared=owner.scope.shared)
            self.task_days[name] = state
        if day is None and owner.day_scope is not state:  # a new day: the file names it
            owner.day_scope, owner.usage_dirty = state, True
        return state

    async def ensure_task_day(self, task_id: str, day: date | None = None) -> None:
        """Load the totals of the task's per-day scope of ``day`` once (every run's use
        of it that day, R1.5): a day that began while this process ran starts from what
        others already spent."""
        state = self.task_day(task_id, day)
        if state is not None:
            await self._load(state.name, state)

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
        if scope.shared:  # every session's use: the scope's totals, versioned
            scope.load(*await self._read(scope.name))
        elif self._continued:  # else it starts from nothing: none passed
            scope.totals = await session_task_totals(self._store, self._session_id, task_id)
        if scope.shared or self._continued:
            self.crossings(scope)  # a resumed task's passed thresholds fired in its earlier run
        day_root = task_id if profile.day_limits is not None else (
            self.tasks[parent].day_root if parent is not None else None)
        self.tasks[task_id] = TaskEntry(profile, agent, scope, actions=scope.totals.calls,
                                        parent=parent, day_root=day_root)
        await self.ensure_day(self.today())
        await self.ensure_task_day(task_id)

    def forget(self, task_id: str) -> None:
        """Drop an ended task's entry and its own per-day scopes (their totals stay in
        the store: a later :meth:`start_task` of the id reads them again)."""
        if self.tasks.pop(task_id, None) is None:
            return
        own = task_day_scope(task_id, "")
        for name in [n for n in self.task_days if n.startswith(own)]:
            del self.task_days[name]
            self._loaded.discard(name)

    def task(self, task_id: str) -> ScopeState:
        try:
            return self.tasks[task_id].scope
        except KeyError:
            raise VibeEngineError(f"unknown task {task_id!r}: call start_task first") from None

    def of_task(self, task_id: str) -> tuple[ScopeState, ...]:
        """The task's own scope, its parent's (if any), its per-day scope today (if any),
        the session and today, innermost first."""
        entry = self.tasks.get(task_id)
        if entry is None:
            return (self.task(task_id), self.session, self.day())  # raises: not started
        # today's scope as :meth:`day` answers it, without its frames (asked per call)
        when = (self._today if self._today_from <= wall_seconds() < self._today_to
                and _time.tzname is self._zone else self.today())
        today = self._last_day_state if when == self._last_day else self.day(when)
        if entry.parent is None and entry.day_root is None:
            held = entry.held
            if held is None or held[-1] is not today:
                held = entry.held = (entry.scope, self.session, today)
                entry.held_names = tuple(s.name for s in held)
            return held
        own: tuple[ScopeState, ...] = (entry.scope,)
        if entry.parent is not None:
            own = (entry.scope, self.task(entry.parent))
        if entry.day_root is not None:
            day = self.task_day(task_id)
            assert day is not None
            own = (*own, day)
        return (*own, self.session, today)

    def names(self, task_id: str, scopes: tuple[ScopeState, ...]) -> tuple[str, ...]:
        """The names of ``scopes`` (what :meth:`of_task` returned for ``task_id``)."""
        entry = self.tasks.get(task_id)
        if entry is not None and entry.held is scopes:
            return entry.held_names
        return tuple(s.name for s in scopes)

    def named(self, task_id: str, name: str) -> ScopeState:
        """The scope ``name`` of ``task_id`` (one of the names a reservation holds)."""
        if name == f"task:{task_id}":
            return self.task(task_id)
        if name in self.task_days:
            return self.task_days[name]
        if name.startswith("task:"):  # the task's parent
            return self.task(name[5:])
        if name.startswith("session:"):
            return self.session
        return self.days[name[4:]]

    # -- charging ------------------------------------------------------------------

    async def add(self, event: UsageEvent, versions: tuple[int, ...] = ()) -> list[Crossing]:
        """Add a recorded event to each of its scopes; return the new threshold crossings.
        ``versions``: what the store's totals of each of its scopes (``scopes_of`` order)
        reached with it, when the store tells (see :meth:`ScopeState.charge`)."""
        added = self.add_loaded(event, versions=versions)
        if added is not None:
            return added
        # the first event of a new day: the totals loaded now include it (recorded)
        when, entry = date.fromisoformat(event.day), self.tasks.get(event.task_id)
        new_day = event.day not in self._loaded
        name = task_day_scope(event.day_scope, event.day)
        new_task_day = entry is not None and bool(event.day_scope) and name not in self._loaded
        # out of reach, the store spooled the event: the scopes not read yet are left to
        # their read once it answers (which holds it), the others count it now
        if new_day:
            with contextlib.suppress(StoreUnavailableError):
                await self.ensure_day(when)
        if new_task_day:  # its placeholder made, whether or not the read succeeds
            with contextlib.suppress(StoreUnavailableError):
                await self.ensure_task_day(event.day_scope, when)
        # loaded after the event was recorded, the scopes hold it -- unless the read was
        # under way before (another charge's): the versions, when known, tell which
        added = self.add_loaded(event, loaded_day=new_day and not versions,
                                loaded_task_day=new_task_day and not versions,
                                versions=versions, unread=True)
        if added is None:  # its per-day scope's task is not (or no longer) started
            raise VibeEngineError(f"unknown task {event.day_scope!r}: call start_task first")
        return added

    def add_loaded(self, event: UsageEvent, *, loaded_day: bool = False,
                   loaded_task_day: bool = False,
                   versions: tuple[int, ...] = (), unread: bool = False,
                   ) -> list[Crossing] | None:
        """:meth:`add` without a wait, when the event's day scopes are loaded (every charge
        but a day's first); None, adding nothing, when one is not (``unread``: they are
        left out -- their read, when made, holds the event).  ``loaded_*``: that scope
        was loaded after the event was recorded (it holds the event already)."""
        loaded, day, entry = self._loaded, event.day, self.tasks.get(event.task_id)
        task_day: ScopeState | None = None
        if entry is not None and event.day_scope:
            task_day = self.task_days.get(task_day_scope(event.day_scope, day))
            if task_day is None:
                return None
            if task_day.name not in loaded:
                if not unread:
                    return None
                task_day = None
        day_state = self.days.get(day) if day in loaded else None
        if day_state is None and not unread:
            return None
        v = versions or _UNKNOWN  # each scope's version, ``scopes_of`` order (0: unknown)
        charged: list[tuple[ScopeState, int]] = []
        if entry is not None:  # the task's scope, its parent's (``scopes_of``: first, second)
            charged.append((entry.scope, v[0]))
            parent = self.tasks.get(entry.parent) if entry.parent is not None else None
            if event.model:
                entry.actions += 1
                if parent is not None:
                    parent.actions += 1
            if parent is not None:
                charged.append((parent.scope, v[1]))
        if task_day is not None:  # ``_HELD``: loaded after the event was recorded
            charged.append((task_day, _HELD if loaded_task_day else v[-3]))
        if event.session_id == self._session_id:
            charged.append((self.session, v[-2]))
        if day_state is not None:
            charged.append((day_state, _HELD if loaded_day else v[-1]))
        charge_each(event, charged)
        out: list[Crossing] = []
        for scope, _ in charged:  # an unlimited scope (often the session, the day): none
            caps = scope._caps
            if caps.limited or caps.limits is not scope.limits:
                out += self.crossings(scope)
        return out

    async def add_recovered(self, event: UsageEvent, versions: tuple[int, ...] = ()) -> None:
        """Add an estimate charged for a call another process left open to the scopes here
        that count every process's use (the day, a task's day, this session, a task
        spanning the store or this session); the next charge of each reports crossings.
        ``versions``: as :meth:`add`'s; with them, a read of a per-day scope under way
        ends first, and the versions tell whether it holds the estimate."""
        if versions:
            for key in (event.day, task_day_scope(event.day_scope, event.day)):
                reading = self._loading.get(key)
                if reading is not None:
                    await reading.wait()
        for name, version in zip(scopes_of(event), versions or _UNKNOWN, strict=False):
            state = self._counting(name, event.session_id)
            if state is not None:
                state.charge(event, version)

    def take_back_recovered(self, event: UsageEvent) -> None:
        """Take back an estimate :meth:`add_recovered` added: the call's own usage replaced
        it (its process was only frozen); not on a store that versions its totals."""
        for state in self.counting(event):
            state.totals.remove(event)

    def counting(self, event: UsageEvent) -> list[ScopeState]:
        """The scopes here among ``event``'s that count every process's use."""
        found = (self._counting(name, event.session_id) for name in scopes_of(event))
        return [state for state in found if state is not None]

    def _counting(self, name: str, session_id: str) -> ScopeState | None:
        if name.startswith("day:"):
            return self.days.get(name[4:]) if name[4:] in self._loaded else None
        if name.startswith("task-day:"):
            return self.task_days.get(name) if name in self._loaded else None
        if name.startswith("session:"):
            return self.session if name == self.session.name else None
        entry = self.tasks.get(name[5:])
        if entry is None or not (entry.scope.shared or session_id == self._session_id):
            return None  # another session's use of a task that counts per session
        return entry.scope

    def time_crossings(self, task_id: str) -> list[Crossing]:
        """Threshold crossings of the task's wall-time budget, as of now."""
        entry = self.tasks.get(task_id)  # asked per call
        return self._thresholds.time_crossings(
            entry.scope if entry is not None else self.task(task_id))


#: The versions of an event's scopes when the store does not tell them (at most five).
_UNKNOWN = (0, 0, 0, 0, 0)
_HELD = -1  # the "version" of a scope that holds the event already: not charged
