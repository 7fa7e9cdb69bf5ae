"""Deadlock detection cost and the event-loop stall it causes (R5.6).

``python -m benchmarks.deadlock --json [--quick]``

For wait-for graphs of 1k, 10k and 100k agents (a random forest of waits —
most agents wait for one other, some for two, as shared-lock waiters do —
plus planted rings of 2–20 agents that the forest leads into):

* ``detect_ms``: one full check by :class:`DeadlockDetector` when *every*
  node changed since the last check (the worst case: the whole graph was
  built since the last check), wall time including the time it yields;
* ``max_loop_stall_ms``: the longest time a ticker coroutine could not run
  during that check (the event-loop stall);
* ``incremental_detect_ms`` / ``incremental_max_loop_stall_ms``: the same for
  the steady state, a check after 1 % of the agents changed their waits;
* ``cycles_found`` (must equal ``cycles_planted``);
* baseline, same run: ``full_sweep_find_cycle_ms`` — ``nx.find_cycle`` over
  the whole (acyclic part of the) graph, one blocking call, so its duration is
  also the stall it would cause; ``ratio_stall_to_full_sweep``.

Medians of ``--repeat`` runs (default 5, 3 with ``--quick``).
"""

from __future__ import annotations

import contextlib
import random
from timeit import default_timer
from typing import Any

import anyio
import anyio.lowlevel
import networkx as nx

from benchmarks._common import emit, median_of, parse_args, progress
from policies.victim import VictimCandidate
from scheduler.deadlock import DeadlockDetector, WaitForGraph


def build(n: int, seed: int = 0, *, with_rings: bool = True) -> tuple[WaitForGraph, int]:
    """A wait-for graph of ``n`` agents; returns it and the number of planted rings."""
    rnd = random.Random(seed)
    g = WaitForGraph()
    rings = max(2, n // 1000)
    ring_nodes: list[list[str]] = []
    used = 0
    for _ in range(rings):
        size = rnd.randint(2, 20)
        ring_nodes.append([f"a{used + i}" for i in range(size)])
        used += size
    for ring in ring_nodes if with_rings else ():
        for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
            g.add_edge(a, b)
    for i in range(used, n):
        if rnd.random() < 0.7:  # waits for an earlier agent: acyclic apart from the rings
            g.add_edge(f"a{i}", f"a{rnd.randrange(i)}")
            if rnd.random() < 0.1:
                g.add_edge(f"a{i}", f"a{rnd.randrange(i)}")
    return g, rings


def _detector(g: WaitForGraph) -> DeadlockDetector:
    async def resolve(victim: str, cycle: tuple[str, ...]) -> None:
        return None

    return DeadlockDetector(g, resolve=resolve,
                            describe=lambda h: VictimCandidate(h, 2.0, 0.0, 0.0))


async def _timed_check(det: DeadlockDetector) -> tuple[float, float, int]:
    """(detect_ms, max_loop_stall_ms, cycles) for one check, with a ticker running."""
    stall = 0.0
    running = True

    async def ticker() -> None:
        nonlocal stall
        last = default_timer()
        while running:
            await anyio.lowlevel.checkpoint()
            now = default_timer()
            stall = max(stall, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        stall = 0.0
        start = default_timer()
        found = await det.find_cycles()
        elapsed = default_timer() - start
        running = False
    return elapsed * 1000, stall * 1000, len(found)


def _churn(g: WaitForGraph, n: int, rnd: random.Random) -> None:
    """1 % of agents drop their waits and wait for someone earlier instead."""
    for _ in range(max(1, n // 100)):
        i = rnd.randrange(n // 2, n)
        node = f"a{i}"
        for t in g.waits_of(node):
            g.remove_edge(node, t)
        g.add_edge(node, f"a{rnd.randrange(n // 4, i)}")


def measure(n: int, repeat: int) -> dict[str, Any]:
    full: list[tuple[float, float, int]] = []
    inc: list[tuple[float, float, int]] = []
    planted = 0
    for r in range(repeat):
        g, planted = build(n, seed=r)
        det = _detector(g)
        full.append(anyio.run(_timed_check, det))
        _churn(g, n, random.Random(r))
        inc.append(anyio.run(_timed_check, det))

    def med(rows: list[tuple[float, float, int]], k: int) -> float:
        return round(sorted(row[k] for row in rows)[len(rows) // 2], 3)

    acyclic = build(n, with_rings=False)[0].graph  # no cycle: find_cycle sweeps it all

    def sweep() -> float:
        start = default_timer()
        with contextlib.suppress(nx.NetworkXNoCycle):
            nx.find_cycle(acyclic)
        return (default_timer() - start) * 1000

    sweep_ms = median_of(sweep, repeat)
    out = {
        "detect_ms": med(full, 0),
        "max_loop_stall_ms": med(full, 1),
        "incremental_detect_ms": med(inc, 0),
        "incremental_max_loop_stall_ms": med(inc, 1),
        "cycles_found": int(med(full, 2)),
        "cycles_planted": planted,
        "full_sweep_find_cycle_ms": round(sweep_ms, 3),
    }
    out["ratio_stall_to_full_sweep"] = round(out["max_loop_stall_ms"] / sweep_ms, 4)
    return out


def main() -> None:
    args = parse_args(__doc__ or "")
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    repeat = args.repeat or (3 if args.quick else 5)
    results: dict[str, Any] = {}
    for n in sizes:
        progress(f"deadlock: {n} agents x {repeat}")
        results[f"agents_{n}"] = measure(n, repeat)
    emit("deadlock", {"agents": sizes, "repeat": repeat, "step_budget": 2000}, results,
         ("networkx", "anyio"), args.json)


if __name__ == "__main__":
    main()
