"""The wait-for graph and the periodic deadlock detector (R5.6, R5.7).

An edge ``A → B`` means *agent A waits for agent B*: for a resource B holds
(:mod:`scheduler.deadlock._locks`) or for B's result (``ctx.wait_for``).  Edges are
reference counted, because the same pair can come from several waits.

Why the detector is incremental (see docs/deadlocks.md): a whole-graph
``nx.find_cycle`` over 100k agents is seconds of pure Python that would freeze
every agent, while a search from one node costs microseconds.  A new cycle
always contains a newly added edge, so each check searches only from the
*sources of edges added since the last check* (plus the nodes of cycles it
found last time, in case their resolution did not take), and yields to the
event loop every ``step_budget`` units of work (a source taken, an edge
looked at).  Nodes fully explored
without finding a cycle are remembered for the rest of the check, so a check
visits each node at most once.

After a cycle is found its victim is taken out of the search (as if already
gone) and the search goes on, so every cycle present is found in one check:
disjoint ones, and overlapping ones that do not run through a victim.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import networkx as nx

from policies.victim import LowestPriorityVictim, VictimCandidate, VictimPolicy
from scheduler.config import DeadlockConfig
from scheduler.core import Hook, get_logger

_log = get_logger("vibe_engine.deadlock")

Resolve = Callable[[str, tuple[str, ...]], Awaitable[None]]
Describe = Callable[[str], VictimCandidate]


class WaitForGraph:
    """Who waits for whom, as a networkx ``DiGraph`` of holder ids."""

    def __init__(self) -> None:
        self.graph: nx.DiGraph[str] = nx.DiGraph()
        self._refs: dict[tuple[str, str], int] = {}
        self._keyed: dict[str, tuple[str, frozenset[str]]] = {}
        self._dirty: dict[str, None] = {}  # insertion-ordered: deterministic, no sort
        #: Called with (holder, True) when someone starts waiting on ``holder`` and with
        #: (holder, False) when nobody does any more (the allocator's R5.2 boost).
        self.on_blocking: Hook[[str, bool]] = Hook()

    # -- edges -------------------------------------------------------------------------

    def add_edge(self, waiter: str, target: str) -> None:
        pair = (waiter, target)
        n = self._refs.get(pair, 0)
        self._refs[pair] = n + 1
        if n == 0:
            self.graph.add_edge(waiter, target)
            self._dirty[waiter] = None
            if self.on_blocking and self.graph.in_degree(target) == 1:
                self.on_blocking(target, True)

    def remove_edge(self, waiter: str, target: str) -> None:
        pair = (waiter, target)
        n = self._refs.get(pair, 0)
        if n <= 1:
            if self._refs.pop(pair, None) is not None:
                self.graph.remove_edge(waiter, target)
                if self.on_blocking and self.graph.in_degree(target) == 0:
                    self.on_blocking(target, False)
                self._drop_if_isolated(waiter)
                self._drop_if_isolated(target)
        else:
            self._refs[pair] = n - 1

    def set_waits(self, key: str, waiter: str, targets: frozenset[str]) -> None:
        """Make the wait named ``key`` (one lock wait) point at exactly ``targets``."""
        _, old = self._keyed.get(key, (waiter, frozenset()))
        for t in targets - old:
            self.add_edge(waiter, t)
        for t in old - targets:
            self.remove_edge(waiter, t)
        if targets:
            self._keyed[key] = (waiter, targets)
        else:
            self._keyed.pop(key, None)

    def add_task_wait(self, waiter: str, target: str) -> None:
        """``waiter`` waits for task ``target``'s result."""
        self.add_edge(waiter, target)

    def remove_task_wait(self, waiter: str, target: str) -> None:
        self.remove_edge(waiter, target)

    @contextmanager
    def waiting(self, waiter: str, target: str) -> Iterator[None]:
        """An edge ``waiter → target`` for the body of the ``with``."""
        self.add_task_wait(waiter, target)
        try:
            yield
        finally:
            self.remove_task_wait(waiter, target)

    def _drop_if_isolated(self, node: str) -> None:
        if node in self.graph and self.graph.degree(node) == 0:
            self.graph.remove_node(node)

    # -- inspection --------------------------------------------------------------------

    def who_waits_for_whom(self) -> list[tuple[str, str]]:
        """Every edge ``(waiter, holder)``, sorted."""
        return sorted(self.graph.edges())

    def is_blocking(self, holder: str) -> bool:
        """True when someone waits for ``holder`` (the allocator boosts such holders)."""
        return holder in self.graph and self.graph.in_degree(holder) > 0

    def waits_of(self, waiter: str) -> list[str]:
        return sorted(self.graph.successors(waiter)) if waiter in self.graph else []

    def take_dirty(self) -> list[str]:
        """Nodes that gained an out-edge since the last call, oldest change first (and reset)."""
        dirty, self._dirty = self._dirty, {}
        return list(dirty)

    def mark_dirty(self, nodes: Sequence[str]) -> None:
        self._dirty.update(dict.fromkeys(nodes))

    def __len__(self) -> int:
        return int(self.graph.number_of_nodes())


@dataclass(frozen=True, slots=True)
class DeadlockStatistics:
    """What :meth:`DeadlockDetector.statistics` reports."""

    checks: int
    cycles_found: int
    victims: int
    nodes: int
    edges: int
    last_check_searched: int
    last_check_expanded: int


class DeadlockDetector:
    """Every ``config.interval_s`` finds every cycle and resolves each by a victim (R5.6)."""

    def __init__(
        self,
        graph: WaitForGraph,
        *,
        resolve: Resolve,
        describe: Describe,
        config: DeadlockConfig | None = None,
        policy: VictimPolicy | None = None,
        step_budget: int = 2000,
    ) -> None:
        self.graph = graph
        self.config = config or DeadlockConfig()
        self.policy: VictimPolicy = policy or LowestPriorityVictim()
        self._resolve = resolve
        self._describe = describe
        self.step_budget = step_budget
        self._checks = self._cycles = self._victims = 0
        self._searched = self._expanded = 0
        self._steps = 0

    def who_waits_for_whom(self) -> list[tuple[str, str]]:
        return self.graph.who_waits_for_whom()

    def is_blocking(self, holder: str) -> bool:
        return self.graph.is_blocking(holder)

    def statistics(self) -> DeadlockStatistics:
        g = self.graph.graph
        return DeadlockStatistics(
            self._checks, self._cycles, self._victims, g.number_of_nodes(),
            g.number_of_edges(), self._searched, self._expanded,
        )

    async def run(self) -> None:
        """The service loop: check, sleep ``interval_s``, forever (cancel to stop)."""
        while True:
            await anyio.sleep(self.config.interval_s)
            await self.check()

    async def check(self) -> list[tuple[str, tuple[str, ...]]]:
        """One check: find the cycles, resolve each; returns ``(victim, cycle)`` pairs."""
        self._checks += 1
        found = [fc for fc in await self.find_cycles() if self._present(fc[1])]
        for victim, cycle in found:  # (re-verified: the search yielded to the loop)
            _log.info("deadlock_found", victim=victim, cycle=list(cycle))
            await self._resolve(victim, cycle)
        # Re-search these next time in case a resolution did not take.
        self.graph.mark_dirty([n for _, cycle in found for n in cycle])
        return found

    async def find_cycles(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every cycle through a changed node, each with the victim the policy chose."""
        sources = self.graph.take_dirty()
        self._searched, self._expanded = len(sources), 0
        done: set[str] = set()  # explored: reaches no cycle avoiding the victims
        victims: set[str] = set()
        found: list[tuple[str, tuple[str, ...]]] = []
        for source in sources:
            self._steps += 1
            if self._steps >= self.step_budget:
                await self._yield()
            while True:
                cycle = await self._search(source, done, victims)
                if cycle is None:
                    break
                victim = self._choose(cycle)
                victims.add(victim)
                found.append((victim, cycle))
                self._cycles += 1
                self._victims += 1
        return found

    def _choose(self, cycle: tuple[str, ...]) -> str:
        candidates = [self._describe(n) for n in cycle]
        return self.policy.choose(candidates)

    async def _search(
        self, source: str, done: set[str], victims: set[str]
    ) -> tuple[str, ...] | None:
        """Iterative DFS from ``source``; a cycle (verified present now) or None."""
        g = self.graph.graph
        if source in done or source in victims or source not in g:
            return None
        path: list[str] = [source]
        on_path: dict[str, int] = {source: 0}
        stack: list[Iterator[str]] = [iter(list(g.successors(source)))]
        budget = self.step_budget
        while stack:
            self._steps += 1
            if self._steps >= budget:
                await self._yield()
            nxt = next(stack[-1], None)
            if nxt is None:
                node = path.pop()
                del on_path[node]
                stack.pop()
                done.add(node)
                continue
            if nxt in victims or nxt in done:
                continue
            if nxt in on_path:
                cycle = tuple(path[on_path[nxt]:])
                if self._present(cycle):
                    return cycle
                continue  # an edge vanished while we yielded: not a cycle any more
            if nxt not in g:
                continue
            path.append(nxt)
            on_path[nxt] = len(path) - 1
            stack.append(iter(list(g.successors(nxt))))
            self._expanded += 1
        return None

    async def _yield(self) -> None:
        """Let the other coroutines run: every ``step_budget`` units of work (a source
        taken, an edge looked at); the counter is inlined in the loops because it runs
        once per edge."""
        self._steps = 0
        await anyio.lowlevel.checkpoint()

    def _present(self, cycle: tuple[str, ...]) -> bool:
        g = self.graph.graph
        return all(
            g.has_edge(a, b) for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)
        )
