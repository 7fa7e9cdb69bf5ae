"""The wait-for graph, the incremental detector, the victim policy and the resolver (R5.6, R5.7)."""

from __future__ import annotations

import anyio
import networkx as nx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.victim import LowestPriorityVictim, VictimCandidate, VictimPolicy
from scheduler.config import DeadlockConfig
from scheduler.core import EventBus
from scheduler.deadlock import DeadlockDetector, DeadlockResolver, LockManager, WaitForGraph
from scheduler.testing import run_virtual


class Recorder:
    def __init__(self) -> None:
        self.resolved: list[tuple[str, tuple[str, ...]]] = []

    async def __call__(self, victim: str, cycle: tuple[str, ...]) -> None:
        self.resolved.append((victim, cycle))


def _detector(graph: WaitForGraph, prio: dict[str, int] | None = None,
              step_budget: int = 2000) -> tuple[DeadlockDetector, Recorder]:
    rec = Recorder()
    prio = prio or {}

    def describe(h: str) -> VictimCandidate:
        return VictimCandidate(h, prio.get(h, 2), 0.0, 0.0)

    return DeadlockDetector(graph, resolve=rec, describe=describe,
                            step_budget=step_budget), rec


def _ring(graph: WaitForGraph, names: list[str]) -> None:
    for a, b in zip(names, names[1:] + names[:1], strict=True):
        graph.add_edge(a, b)


async def test_r5_6_finds_disjoint_and_overlapping_cycles_in_one_check() -> None:
    """R5.6: every cycle present is found; a victim breaks each one."""
    g = WaitForGraph()
    _ring(g, ["a", "b"])
    _ring(g, ["c", "d", "e"])
    _ring(g, ["x", "y"])
    _ring(g, ["x", "z"])  # overlaps the x↔y cycle at x
    det, rec = _detector(g, prio={"b": 0, "e": 0, "y": 0, "z": 0})
    found = await det.check()
    assert sorted(v for v, _ in found) == ["b", "e", "y", "z"]
    assert found == rec.resolved
    assert det.statistics().cycles_found == 4


async def test_r5_6_searches_only_changed_nodes() -> None:
    """R5.6: a check searches from the nodes whose edges changed, not the whole graph."""
    g = WaitForGraph()
    for i in range(1000):
        g.add_edge(f"n{i}", f"n{i + 1}")  # a long chain: no cycle
    det, _ = _detector(g)
    assert await det.check() == []
    assert det.statistics().last_check_searched == 1000
    g.add_edge("m0", "m1")
    assert await det.check() == []
    stats = det.statistics()
    assert (stats.last_check_searched, stats.last_check_expanded) == (1, 1)
    g.add_edge("n1000", "n0")  # closes the chain into a ring
    found = await det.check()
    assert len(found) == 1 and len(found[0][1]) == 1001
    assert det.statistics().last_check_searched == 1


async def test_r5_6_long_search_yields_to_the_loop() -> None:
    """R5.6: the search checkpoints every ``step_budget`` nodes, so other tasks run."""
    g = WaitForGraph()
    for i in range(10_000):
        g.add_edge(f"n{i}", f"n{i + 1}")
    det, _ = _detector(g, step_budget=500)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        before = ticks
        await det.check()
        tg.cancel_scope.cancel()
    assert ticks - before >= 10_000 // 500 - 1


async def test_r5_6_cycle_broken_during_search_is_not_reported() -> None:
    """R5.6: a cycle is reported only if every edge is still there when it is found."""
    g = WaitForGraph()
    names = [f"n{i}" for i in range(3000)]
    _ring(g, names)
    det, rec = _detector(g, step_budget=100)
    async with anyio.create_task_group() as tg:
        async def breaker() -> None:
            await anyio.lowlevel.checkpoint()
            g.remove_edge("n2999", "n0")

        tg.start_soon(breaker)
        found = await det.check()
    assert found == [] and rec.resolved == []


async def test_r5_6_unresolved_cycle_is_searched_again() -> None:
    """R5.6: if a resolution did not take, the next check finds the cycle again."""
    g = WaitForGraph()
    _ring(g, ["a", "b"])
    det, _ = _detector(g, prio={"a": 0})
    assert [v for v, _ in await det.check()] == ["a"]
    assert [v for v, _ in await det.check()] == ["a"]  # nothing was removed
    g.remove_edge("a", "b")
    assert await det.check() == []
    assert await det.check() == []


async def test_r5_6_run_checks_every_interval() -> None:
    """R5.6: the service checks every ``interval_s`` (10 s by default)."""
    g = WaitForGraph()
    times: list[float] = []

    async def resolve(victim: str, cycle: tuple[str, ...]) -> None:
        times.append(anyio.current_time())
        g.remove_edge(victim, g.waits_of(victim)[0])

    det = DeadlockDetector(g, resolve=resolve,
                           describe=lambda h: VictimCandidate(h, 0, 0, 0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(det.run)
        await anyio.sleep(3)
        _ring(g, ["a", "b"])
        await anyio.sleep(10)
        _ring(g, ["c", "d"])
        await anyio.sleep(20)
        tg.cancel_scope.cancel()
    assert times == [10.0, 20.0]


def test_r5_6_task_waits_are_refcounted_edges() -> None:
    """R5.6: task waits add edges; the same pair from two waits stays until both end."""
    g = WaitForGraph()
    with g.waiting("a", "b"):
        g.add_task_wait("a", "b")
        assert g.who_waits_for_whom() == [("a", "b")]
        assert g.is_blocking("b") and not g.is_blocking("a")
    assert g.who_waits_for_whom() == [("a", "b")]
    g.remove_task_wait("a", "b")
    assert g.who_waits_for_whom() == [] and len(g) == 0


@given(st.integers(2, 40), st.integers(0, 10_000), st.lists(st.tuples(
    st.integers(0, 39), st.integers(0, 39)), max_size=80))
def test_r5_6_after_check_victims_break_every_cycle(n: int, seed: int,
                                                    extra: list[tuple[int, int]]) -> None:
    """R5.6: removing the chosen victims leaves the wait-for graph acyclic (any graph)."""
    async def main() -> None:
        g = WaitForGraph()
        for a, b in extra:
            if a < n and b < n:
                g.add_edge(f"n{a}", f"n{b}")
        _ring(g, [f"n{i}" for i in range(0, n, 2)] or ["n0"])
        det, _ = _detector(g, step_budget=7)
        found = await det.check()
        rest = g.graph.copy()
        rest.remove_nodes_from(v for v, _ in found)
        assert nx.is_directed_acyclic_graph(rest)
        assert bool(found) == (not nx.is_directed_acyclic_graph(g.graph))

    run_virtual(main)


# -- the victim policy (pure) -------------------------------------------------------------


def test_r5_7_victim_order_priority_then_work_then_newest() -> None:
    """R5.7: lowest priority, then least work, then newest task, then smallest id."""
    pol: VictimPolicy = LowestPriorityVictim()
    c = VictimCandidate
    assert pol.choose([c("a", 3, 0, 0), c("b", 1, 9e9, 0)]) == "b"
    assert pol.choose([c("a", 2, 500, 0), c("b", 2, 100, 0)]) == "b"
    assert pol.choose([c("a", 2, 100, 5.0), c("b", 2, 100, 7.0)]) == "b"
    assert pol.choose([c("b", 2, 100, 5.0), c("a", 2, 100, 5.0)]) == "a"
    with pytest.raises(ValueError):
        pol.choose([])


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 5)),
                min_size=1, max_size=8, unique=True), st.randoms())
def test_r5_7_victim_choice_ignores_cycle_order(rows: list[tuple[int, int, int]],
                                                rnd: object) -> None:
    """R5.7: the same cycle in any rotation or order gives the same victim."""
    import random
    assert isinstance(rnd, random.Random)
    cands = [VictimCandidate(f"t{i}", p, w, s) for i, (p, w, s) in enumerate(rows)]
    pol = LowestPriorityVictim()
    first = pol.choose(cands)
    rnd.shuffle(cands)
    assert pol.choose(cands) == first
    v = next(x for x in cands if x.holder == first)
    assert all(LowestPriorityVictim.order(v) <= LowestPriorityVictim.order(x) for x in cands)


# -- the resolver --------------------------------------------------------------------------


async def test_r5_7_resolver_aborts_releases_requeues_then_fails() -> None:
    """R5.7: abort + release locks and leases + event; requeue only max_requeues times."""
    locks = LockManager()
    bus = EventBus(anyio.current_time)
    aborts: list[tuple[str, str, bool]] = []
    leases: list[str] = []

    async def release_leases(holder: str) -> None:
        leases.append(holder)

    def abort(victim: str, reason: str, requeue: bool) -> bool:
        aborts.append((victim, reason, requeue))
        return True

    resolver = DeadlockResolver(
        locks=locks, bus=bus, release_leases=release_leases, abort=abort,
        config=DeadlockConfig(max_requeues=2),
    )
    for _ in range(3):
        locks.acquire_nowait("v", "file:a")
        locks.acquire_nowait("v", "b", exclusive=False)
        await resolver("v", ("v", "w"))
        assert locks.held_by("v") == []
    assert [q for _, _, q in aborts] == [True, True, False]
    assert aborts[0][1] == "task v aborted: yielded due to deadlock (v → w → v)"
    assert leases == ["v", "v", "v"]
    events = [e for e in bus.history if e.name == "deadlock_victim"]
    assert [e.message for e in events] == ["agent v yielded due to deadlock"] * 3
    assert events[0].data["released"] == ["b", "file:a"]
