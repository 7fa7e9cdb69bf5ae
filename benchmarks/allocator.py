"""Allocator benchmark: the hot path every model call waits on (figures: allocator.md).

N agents (1 000 and 10 000) each do ``cycles`` acquire → hold (one yield) →
settle cycles against one pool of 50 concurrent slots, on asyncio.  Timed in
the same run, with the same loop shape:

* ``priority_fairness`` / ``fifo`` — our :class:`~scheduler.allocator._allocator.Allocator`
  (serviced by :func:`open_allocator`) with each policy; agents are 10 %
  critical_path, 70 % normal, 20 % background, asking 500–2 000 tokens;
* ``asyncio_semaphore`` — ``asyncio.Semaphore(50)``;
* ``anyio_capacity_limiter`` — ``anyio.CapacityLimiter(50)``;
* ``aiolimiter`` — ``AsyncLimiter(50, 50e-6)``: a leaky-bucket *rate* limiter,
  set to drain faster than the loop can cycle so it measures its own overhead.

Fairness figures come from a separate, untimed run of ``priority_fairness``
(and ``fifo`` for contrast), snapshotted when the first normal agent finishes
(until then every agent is backlogged): Jain's index and the largest service
gap (tokens served) among normal agents, and the background class's share of
the tokens served.

Run: ``python -m benchmarks.allocator --json [--quick] [--repeat N]``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
from aiolimiter import AsyncLimiter

from benchmarks._common import emit, parse_args, progress
from policies.fairness import Fifo, PriorityWithFairness
from scheduler.allocator import open_allocator
from scheduler.config import AllocatorConfig, PoolConfig

SLOTS = 50
SIZES = (500, 1000, 1500, 2000)
POOL = "bench"


def _config() -> AllocatorConfig:
    return AllocatorConfig(
        pools={POOL: PoolConfig(tokens_per_minute=None, requests_per_minute=None,
                                concurrent=SLOTS)})


def _class_of(i: int) -> str:
    r = i % 10
    return "critical_path" if r == 0 else "background" if r >= 8 else "normal"


def _size_of(i: int) -> int:
    return SIZES[(i // 10) % len(SIZES)]


async def _yield() -> None:
    await asyncio.sleep(0)  # noqa: TID251 - the benchmark's one hold, on asyncio itself


# -- timed loops ------------------------------------------------------------------------
async def _run_allocator(agents: int, cycles: int, policy_name: str) -> float:
    cfg = _config()
    policy = Fifo(cfg.policy_params()) if policy_name == "fifo" else PriorityWithFairness(
        cfg.policy_params())
    async with open_allocator(cfg, policy=policy) as alloc:
        for i in range(agents):
            alloc.register(f"a{i}", _class_of(i))  # type: ignore[arg-type]

        async def agent(i: int) -> None:
            holder, size = f"a{i}", _size_of(i)
            for _ in range(cycles):
                lease = await alloc.acquire(holder, tokens=size, pool=POOL)
                await _yield()
                alloc.settle(lease.id, size)
                # A settled lease is dropped, as the gateway's call scope drops it and as
                # ``async with`` drops the baselines' per-cycle objects; kept until the agent's
                # next grant, it would be freed long out of the CPU caches, a cost the runtime
                # never pays.
                del lease

        return await _timed(agents, agent)


async def _run_semaphore(agents: int, cycles: int) -> float:
    sem = asyncio.Semaphore(SLOTS)

    async def agent(i: int) -> None:
        for _ in range(cycles):
            async with sem:
                await _yield()

    return await _timed(agents, agent)


async def _run_capacity_limiter(agents: int, cycles: int) -> float:
    limiter = anyio.CapacityLimiter(SLOTS)

    async def agent(i: int) -> None:
        for _ in range(cycles):
            async with limiter:
                await _yield()

    return await _timed(agents, agent)


async def _run_aiolimiter(agents: int, cycles: int) -> float:
    limiter = AsyncLimiter(SLOTS, 50e-6)

    async def agent(i: int) -> None:
        for _ in range(cycles):
            async with limiter:
                await _yield()

    return await _timed(agents, agent)


async def _timed(agents: int, agent: Callable[[int], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(agent(i) for i in range(agents)))
    return time.perf_counter() - start


# -- fairness run -----------------------------------------------------------------------
async def _fairness(agents: int, cycles: int, policy_name: str) -> dict[str, float]:
    cfg = _config()
    policy = Fifo(cfg.policy_params()) if policy_name == "fifo" else PriorityWithFairness(
        cfg.policy_params())
    served = [0] * agents
    snapshot: list[list[int]] = []
    async with open_allocator(cfg, policy=policy) as alloc:
        for i in range(agents):
            alloc.register(f"a{i}", _class_of(i))  # type: ignore[arg-type]

        async def agent(i: int) -> None:
            holder, size = f"a{i}", _size_of(i)
            for n in range(cycles):
                lease = await alloc.acquire(holder, tokens=size, pool=POOL)
                served[i] += lease.tokens
                await _yield()
                alloc.settle(lease.id, size)
                if n == cycles - 1 and not snapshot and _class_of(i) == "normal":
                    snapshot.append(list(served))

        await asyncio.gather(*(agent(i) for i in range(agents)))
    at = snapshot[0]
    normal = [at[i] for i in range(agents) if _class_of(i) == "normal"]
    background = sum(at[i] for i in range(agents) if _class_of(i) == "background")
    return {
        "jain_index": _jain(normal),
        "max_service_gap_tokens": float(max(normal) - min(normal)),
        "background_share": background / sum(at),
    }


def _jain(xs: list[int]) -> float:
    total = sum(xs)
    squares = sum(x * x for x in xs)
    return total * total / (len(xs) * squares) if squares else 1.0


# -- driver -----------------------------------------------------------------------------
def _size(agents: int, cycles: int, repeat: int) -> dict[str, Any]:
    calls = agents * cycles
    runners: dict[str, Callable[[], Coroutine[Any, Any, float]]] = {
        "priority_fairness": lambda: _run_allocator(agents, cycles, "priority_fairness"),
        "fifo": lambda: _run_allocator(agents, cycles, "fifo"),
        "asyncio_semaphore": lambda: _run_semaphore(agents, cycles),
        "anyio_capacity_limiter": lambda: _run_capacity_limiter(agents, cycles),
        "aiolimiter": lambda: _run_aiolimiter(agents, cycles),
    }
    # Round-robin repetitions: a slow spell of this shared machine hits every variant
    # alike instead of one variant's whole series, so the same-run ratios stay honest.
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            samples[name].append(asyncio.run(fn()) / calls * 1e6)
    us: dict[str, float] = {}
    for name, values in samples.items():
        us[name] = round(statistics.median(values), 3)
        progress(f"agents={agents} {name}: {us[name]} us/cycle (runs: "
                 f"{', '.join(f'{v:.2f}' for v in values)})")
    fair = asyncio.run(_fairness(agents, cycles, "priority_fairness"))
    fifo = asyncio.run(_fairness(agents, cycles, "fifo"))
    progress(f"agents={agents} fairness: {fair} (fifo: {fifo})")
    return {
        "us_per_cycle": us,
        "ratio_to_semaphore": round(us["priority_fairness"] / us["asyncio_semaphore"], 3),
        "ratio_to_capacity_limiter": round(
            us["priority_fairness"] / us["anyio_capacity_limiter"], 3),
        "jain_index": round(fair["jain_index"], 5),
        "max_service_gap_tokens": fair["max_service_gap_tokens"],
        "background_share": round(fair["background_share"], 4),
        "fifo_jain_index": round(fifo["jain_index"], 5),
        "fifo_background_share": round(fifo["background_share"], 4),
    }


def main() -> None:
    args = parse_args("allocator hot path vs asyncio/anyio/aiolimiter baselines")
    if args.quick:
        plan = {1000: 20, 10_000: 4}
        repeat = args.repeat or 1
    else:
        plan = {1000: 100, 10_000: 100}
        repeat = args.repeat or 3
    results = {f"agents_{n}": _size(n, cycles, repeat) for n, cycles in plan.items()}
    sizes = {"agents": list(plan), "cycles": plan, "slots": SLOTS, "repeat": repeat,
             "loop": "asyncio"}
    emit("allocator", sizes, results, ("anyio", "aiolimiter", "trio"), args.json)


if __name__ == "__main__":
    main()
