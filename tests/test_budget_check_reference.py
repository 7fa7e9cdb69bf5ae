"""The per-call budget questions against a plain reading of R1.1 / R3.1 (#22).

The check of a request, the hold a shared ledger would take, the alert thresholds passed
and the largest share of a limit used read each scope's limits once per ``Limits`` (see
``ScopeState._caps``), not dimension by dimension; here hypothesis draws scopes (any
limits, totals, amounts held, thresholds fired) and requests, and each answer must be
exactly the one the definitions below give, dimension by dimension: the same error (scope,
dimension, used, limit, requested, held), the same crossings in the same order, the same
fraction.
"""

from __future__ import annotations

import copy
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import BudgetExceededError, Limits, VibeConfig
from scheduler.budget._reservations import Reservations
from scheduler.budget._scope_state import COUNTED, Crossing, Level, ScopeState, worst_fraction
from scheduler.budget._scopes import Scopes
from scheduler.budget._thresholds import Thresholds
from scheduler.store import MemoryStore

MODELS = ("sonnet", "opus")
OPS = ("file_edits", "shell_commands", "dangerous_commands")
TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens")
NOW = 50.0
_small = st.integers(0, 40)
_limit = st.none() | _small
_dollars = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 8.0])


@st.composite
def _limits(draw: st.DrawFn) -> Limits:
    """A few dimensions limited (any may be 0), the others not."""
    named = draw(st.sets(st.sampled_from(("tokens", *TOKEN_KINDS, *OPS, "cost_usd",
                                          "cost_warning_usd", "time_s")), max_size=4))
    data: dict[str, Any] = {d: draw(_small) for d in named}
    for dollars in {"cost_usd", "cost_warning_usd"} & named:
        data[dollars] = draw(_dollars)
    if "time_s" in named:
        data["time_s"] = draw(st.sampled_from([0.0, 30.0, 50.0, 60.0, 100.0]))
    data["tokens_by_model"] = draw(st.dictionaries(st.sampled_from(MODELS), _small,
                                                   max_size=1))
    return Limits.model_validate(data)


@st.composite
def _scope(draw: st.DrawFn, name: str) -> ScopeState:
    s = ScopeState(name, draw(_limits()), started_at=0.0, shared=draw(st.booleans()))
    t = s.totals
    for kind in TOKEN_KINDS:
        setattr(t, kind, draw(st.integers(0, 20)))
    for op in OPS:
        setattr(t, op, draw(st.integers(0, 20)))
    t.cost_usd = draw(_dollars)
    t.tokens_by_model = draw(st.dictionaries(st.sampled_from(MODELS), st.integers(0, 50)))
    s.reserved_tokens = draw(st.integers(0, 20))
    s.reserved_cost = draw(_dollars)
    s.reserved_by_model = draw(st.dictionaries(st.sampled_from(MODELS), st.integers(0, 20)))
    s.reserved_ops = draw(st.none() | st.dictionaries(st.sampled_from(OPS), st.integers(0, 5)))
    dims = st.sampled_from(("tokens", "cost_usd", "time_s", *TOKEN_KINDS, "tokens:opus"))
    levels = st.sampled_from(cast(tuple[Level, ...], ("warning", "critical", "exceeded")))
    fired = draw(st.none() | st.sets(st.tuples(dims, levels), max_size=4))
    s.fired = set(fired) if fired is not None else None
    return s


@st.composite
def _task_scopes(draw: st.DrawFn) -> tuple[ScopeState, ...]:
    """A task's scopes as ``Scopes.of_task`` lists them: its own, maybe its parent's, the
    session and the day last."""
    names = ["task:t1", *(["task:p"] if draw(st.booleans()) else []), "session:s", "day:d"]
    return tuple(draw(_scope(n)) for n in names)


_ZERO = {"model": "", "tokens": 0, "cost_usd": 0.0, "file_edits": 0, "shell_commands": 0,
         "dangerous_commands": 0, "prompt_tokens": 0, "completion_tokens": 0}
_any = st.fixed_dictionaries({
    "model": st.sampled_from(("", *MODELS)), "tokens": st.integers(0, 30),
    "cost_usd": st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    "file_edits": st.integers(0, 3), "shell_commands": st.integers(0, 3),
    "dangerous_commands": st.integers(0, 2),
    "prompt_tokens": st.integers(0, 30), "completion_tokens": st.integers(0, 30),
})
_call = _any.map(lambda r: {**r, "file_edits": 0, "shell_commands": 0,
                            "dangerous_commands": 0})
_amounts = _any.map(lambda r: {**r, "prompt_tokens": 0, "completion_tokens": 0,
                               "file_edits": 0, "shell_commands": 0, "dangerous_commands": 0})
_operation = _any.map(lambda r: {**_ZERO, "file_edits": r["file_edits"],
                                 "shell_commands": r["shell_commands"],
                                 "dangerous_commands": r["dangerous_commands"]})
#: A model call, tokens and dollars alone, an operation's counts, or any of it at once.
_request = st.one_of(_call, _amounts, _operation, _any)


class _OneTask:
    """The part of :class:`Scopes` a check reads."""

    def __init__(self, scopes: tuple[ScopeState, ...]) -> None:
        self.scopes = scopes

    def task(self, task_id: str) -> ScopeState:
        return self.scopes[0]

    def of_task(self, task_id: str) -> tuple[ScopeState, ...]:
        return self.scopes


def _reservations(scopes: tuple[ScopeState, ...]) -> Reservations:
    res = Reservations(cast(Scopes, _OneTask(scopes)), MemoryStore(), unavailable_wait_s=0.0,
                       clock=lambda: NOW, hold_id=lambda task_id: "h")
    res._hold_unlimited = False  # a SQLite file's ledger: only limited calls are held
    return res


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    try:
        fn(*args, **kwargs)
    except BudgetExceededError as e:
        return (e.scope, e.dimension, e.used, type(e.used), e.limit, e.requested, e.held)
    return ("admitted",)


# -- the definitions, dimension by dimension -------------------------------------------

def _named(limits: Limits) -> dict[str, float]:
    """The limit of every dimension ``limits`` names (a limit of 0 too), per model last."""
    named = {d: v for d in COUNTED if (v := getattr(limits, d)) is not None}
    named.update((f"tokens:{m}", v) for m, v in limits.tokens_by_model.items())
    return named


def _limited(limits: Limits) -> list[tuple[str, float]]:
    return [(d, v) for d, v in _named(limits).items() if v]


def _over(scope: ScopeState, dim: str, amount: float, lim: float) -> None:
    held = scope.held(dim)
    used = scope.used(dim) + held
    if used + amount > lim:
        raise BudgetExceededError(scope.name, dim, used, lim, amount, held=held)


def _defined_check(scopes: tuple[ScopeState, ...], *, model: str, tokens: int,
                   cost_usd: float, file_edits: int, shell_commands: int,
                   dangerous_commands: int, prompt_tokens: int, completion_tokens: int) -> None:
    """R1.1: the task's time; then per scope, innermost first, a model call's own limits
    (prompt, completion, cache reached) in every scope before the amounts asked for."""
    task = scopes[0]
    if task.limits.time_s is not None and NOW - task.started_at >= task.limits.time_s:
        raise BudgetExceededError(task.name, "time_s", NOW - task.started_at,
                                  task.limits.time_s)
    call = bool(prompt_tokens or completion_tokens)
    asked: list[tuple[str, float]] = [
        ("tokens", tokens), ("cost_usd", cost_usd), ("file_edits", file_edits),
        ("shell_commands", shell_commands), ("dangerous_commands", dangerous_commands)]
    wanted = [(d, a) for d, a in asked if a]
    if model and tokens:
        wanted.append((f"tokens:{model}", tokens))
    over: BudgetExceededError | None = None
    for scope in scopes:
        caps = _named(scope.limits)
        if not caps:
            continue
        if call:
            for dim, n in (("prompt_tokens", prompt_tokens),
                           ("completion_tokens", completion_tokens)):
                if n and (lim := caps.get(dim)) is not None:
                    _over(scope, dim, n, lim)
            for dim in ("cache_read_tokens", "cache_write_tokens"):
                if (lim := caps.get(dim)) is not None and scope.used(dim) >= lim:
                    raise BudgetExceededError(scope.name, dim, scope.used(dim), lim)
        if over is not None:
            continue
        try:
            for dim, amount in wanted:
                if (lim := caps.get(dim)) is not None:
                    _over(scope, dim, amount, lim)
        except BudgetExceededError as exc:
            if not call:
                raise
            over = exc
    if over is not None:
        raise over


def _defined_crossings(config: VibeConfig, scope: ScopeState, dims: list[tuple[str, float]],
                       used_of: Any) -> list[Crossing]:
    """R3.1: each of 70 / 90 / 100 % (the cost warning's own fraction for dollars) passed
    and not told yet, in the order of ``dims``, then of the levels."""
    a = config.alerts
    out: list[Crossing] = []
    for dim, lim in dims:
        used = used_of(dim)
        levels: dict[Level, float] = {"warning": a.warning, "critical": a.critical,
                                      "exceeded": a.exceeded}
        if dim == "cost_usd" and scope.limits.cost_warning_usd and scope.limits.cost_usd:
            levels["warning"] = min(scope.limits.cost_warning_usd / scope.limits.cost_usd,
                                    a.critical)
        for level, frac in levels.items():
            if used >= lim * frac and (scope.fired is None or (dim, level) not in scope.fired):
                scope.fired = scope.fired or set()
                scope.fired.add((dim, level))
                out.append(Crossing(scope.name, dim, level, used, lim))
    return out


def _defined_fraction(scopes: tuple[ScopeState, ...]) -> float:
    worst = 0.0
    for scope in scopes:
        for dim, lim in _limited(scope.limits):
            used = scope.used(dim)
            if used > worst * lim:
                worst = used / lim
    return worst


# -- the tests -------------------------------------------------------------------------

@settings(max_examples=120, deadline=None)
@given(_task_scopes(), _request)
def test_r1_1_a_check_refuses_exactly_what_the_limits_say(
    scopes: tuple[ScopeState, ...], request: dict[str, Any],
) -> None:
    """R1.1: the same request admitted or refused, for the same scope and dimension, with
    the same amounts used, held and asked for."""
    expected = _outcome(_defined_check, copy.deepcopy(scopes), **request)
    assert _outcome(_reservations(scopes).check, "t1", **request) == expected


@settings(max_examples=120, deadline=None)
@given(_task_scopes(), st.sampled_from(("", *MODELS)))
def test_r1_2_a_call_is_held_in_the_shared_ledger_only_where_a_limit_is(
    scopes: tuple[ScopeState, ...], model: str,
) -> None:
    """R1.2: a SQLite file's ledger holds a call when one of the scopes it holds in (the
    task scopes spanning the store, the session, the day) limits its tokens, dollars or
    its model's tokens."""
    last = len(scopes) - 2
    limited = any((i >= last or s.shared) and (
        s.limits.tokens is not None or s.limits.cost_usd is not None
        or s.limits.tokens_by_model.get(model) is not None)  # type: ignore[call-overload]
        for i, s in enumerate(scopes))
    assert _reservations(scopes)._takes_hold(scopes, model) is limited


@settings(max_examples=120, deadline=None)
@given(_task_scopes(), st.sampled_from([0.0, 20.0, 35.0, 45.0, 50.0, 80.0]))
def test_r3_1_each_threshold_is_told_once_as_defined(
    scopes: tuple[ScopeState, ...], started_at: float,
) -> None:
    """R3.1: the crossings of every scope (its dimensions limited above 0, then its
    wall time) and the thresholds marked told are those the definition gives."""
    config = VibeConfig()
    thresholds = Thresholds(config, clock=lambda: NOW)
    defined = copy.deepcopy(scopes)
    for got, want in zip(scopes, defined, strict=True):
        got.started_at = want.started_at = started_at
        expected = _defined_crossings(config, want, _limited(want.limits), want.used)
        if want.limits.time_s:
            expected += _defined_crossings(config, want, [("time_s", want.limits.time_s)],
                                           lambda _: NOW - started_at)
        crossed = thresholds.crossings(got) + thresholds.time_crossings(got)
        assert crossed == expected
        assert got.fired == want.fired


@settings(max_examples=120, deadline=None)
@given(_task_scopes())
def test_r5_2_the_largest_share_of_a_limit_used_is_as_defined(
    scopes: tuple[ScopeState, ...],
) -> None:
    """R5.2: routing's input, the largest used ÷ limit over the dimensions limited above 0,
    of a task's scopes and of each scope alone."""
    assert worst_fraction(scopes) == _defined_fraction(scopes)
    for scope in scopes:
        assert scope.max_fraction() == _defined_fraction((scope,))
