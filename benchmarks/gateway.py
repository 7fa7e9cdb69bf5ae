"""The governed call path end to end: what the orchestrator adds to a model call.

``python -m benchmarks.gateway --json [--quick] [--repeat N] [--no-http] [--only PART]``

Per size N (``agents_1000``, ``agents_10000``): N tasks, each run by a trivial
agent making 2 calls through ``ctx.llm.complete``, on the whole orchestrator path
(task start → route → estimate → admit → lease → call → settle → signal → finish)
with a provider that answers at once, a pool of 50 concurrent calls and the real
SQLite store in a temporary state directory (the default store), on asyncio:

* ``us_per_task`` — a run whose agents make no call, per task;
* ``us_per_call`` — (the 2-call run's calling phase − the 0-call run's) ÷ 2N: a
  governed call.  A timed run's *calling phase* lasts from its start until every agent
  has made its calls; the agents wait for that moment before they return, so every
  task's end (its files, whose cost moves with the disk from run to run by more than
  all the calls cost) falls after it, and the difference is the calls'.  Measured with
  the garbage collector set up as ``vibe-engine run`` sets it
  (:func:`scheduler.cli._heap.tune_collector`: what is alive after the warm-up is
  frozen, and collections are rarer) -- the runs are ``Orchestrator.run()`` called
  directly, so without this they would collect as a short script does;
* ``us_per_call_default_gc`` / ``cpu_us_per_call_default_gc`` — the same with
  Python's default collector (``us_per_task`` and the CPU figures below are of these
  runs too), measured first;
* ``bare_us_per_call`` — the baseline, same run: a bare asyncio loop doing the
  same number of calls (N tasks, an ``asyncio.Semaphore(50)``, the same provider);
  ``ratio_to_bare`` = ``us_per_call`` ÷ ``bare_us_per_call``;
* ``cpu_us_per_call`` / ``cpu_us_per_task`` — the same with the process's CPU time
  (every thread) instead of the wall time: on a shared, loaded machine the wall time
  also counts the waits for a core;
* ``loop_cpu_us_per_call`` — the same with the event loop thread's CPU time only;
* ``us_per_call_with_task`` / ``calls_per_s`` — the whole 2-call run (task starts and
  ends included) per call, and its calls per second;
* ``fs_us_per_task`` / ``cpu_fs_us_per_task`` — the file system's part of a task's cost,
  same run: a task's folder and two small files written atomically (what the end of a
  task whose agent returned something writes: ``usage.json``, ``result.json``; the
  measured agents return nothing and write ``usage.json`` only), N times in a fresh
  temporary directory, in line, per task — the yardstick of the disk's speed in that run;
* ``kib_per_agent`` — tracemalloc's peak of Python allocations during a 2-call run
  (untimed: each task ends as soon as its agent made its calls) above the baseline
  taken just before it (imports, tiktoken's tables and one warm-up run are in the
  baseline), per agent; ``bare_kib_per_agent`` the same for the bare loop.
  tracemalloc counts Python allocations only (not SQLite's cache).

``http`` (see :mod:`benchmarks._gateway_http`): the same path over real HTTP with
the real ``anthropic`` SDK against a minimal Messages server in a subprocess
(:mod:`benchmarks._fast_api`), beside the SDK calling that server directly.

Timings are medians of ``--repeat`` runs (3; ``--quick``: 1 at N = 200 and 1,000);
the tuned collector's pairs of runs follow the default's, and the collector is set
back (unfrozen, default thresholds) before the next size.  Each run's state directory
is kept until the benchmark ends (see ``_run_dir``): deleting one run's task folders
made the file system slower for the next run on this project's VMs.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from timeit import default_timer
from typing import Any

import anyio

from benchmarks._common import emit, progress
from scheduler import VibeConfig
from scheduler.cli._heap import tune_collector
from scheduler.core import CompletionRequest, private_dir, write_private
from scheduler.observe import configure_logging
from scheduler.runtime import Orchestrator
from scheduler.testing import InstantProvider

POOL = 50
CALLS = 2
MESSAGES = [{"role": "user", "content": "Rename the helper and update its callers."}]


class _Phase:
    """The calling phase of a timed run: it ends when the last agent has made its calls,
    and the agents wait for that end before they return, so no task's end (its files,
    whose cost moves with the disk from run to run) falls inside it."""

    def __init__(self, n: int) -> None:
        self.left, self.over = n, asyncio.Event()
        self.wall = self.cpu = self.loop_cpu = 0.0

    async def through(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.wall, self.cpu = default_timer(), time.process_time()
            self.loop_cpu = time.thread_time()  # agents run on the event loop's thread
            self.over.set()
        await self.over.wait()


#: The phase of the timed run in progress (None: an untimed run, e.g. for memory).
_PHASE: list[_Phase | None] = [None]


class CallingAgent:
    """The trivial agent: ``calls`` model calls, nothing else."""

    calls = CALLS

    async def run(self, ctx: Any) -> None:
        for _ in range(self.calls):
            await ctx.llm.complete(MESSAGES, max_tokens=256)
        phase = _PHASE[0]
        if phase is not None:
            await phase.through()


class IdleAgent(CallingAgent):
    calls = 0


def bench_config(state_dir: Path, n: int, *, pool: int = POOL, **extra: Any) -> VibeConfig:
    """Defaults except the pool (50 concurrent calls, no rate limits: the provider is
    free), budgets the run cannot reach (a pause would wait for a person) and a state
    directory per run; the store is the default SQLite file."""
    return VibeConfig.model_validate({
        "state_dir": str(state_dir),
        "budgets": {"session": {"tokens": None, "tokens_by_model": {}},
                    "day": {"cost_usd": None}, "weekend_day_cost_usd": None,
                    "task": {"cost_usd": None, "cost_warning_usd": None}},
        "allocator": {"pools": {"anthropic": {
            "tokens_per_minute": None, "requests_per_minute": None, "concurrent": pool}}},
        "tasks": [{"id": f"t{i}", "agent": "bench", "prompt": "x"} for i in range(n)],
        **extra,
    })


#: Process CPU seconds of the last :func:`_orchestrated` run (all threads): on a shared
#: machine less sensitive to other jobs than the wall time.
LAST_CPU_S = [0.0]
#: The event loop's thread alone, same run: the files a task's end writes are written by
#: worker threads, so this part does not move with the disk's latency.
LAST_LOOP_CPU_S = [0.0]
#: (wall, CPU, loop thread's CPU) seconds of the last timed run's calling phase (from
#: the run's start until every agent made its calls: see :class:`_Phase`).
LAST_PHASE_S = [(0.0, 0.0, 0.0)]


_SCRATCH: list[Path] = []


def _run_dir() -> Path:
    """A fresh directory for one run, removed when the benchmark ends, not when the run
    does: on an ext4 without a journal (this project's VMs), creating files soon after
    many were deleted makes the kernel step over every recently freed inode, so deleting
    one run's thousands of task folders would be charged to the next run's tasks."""
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="vibe-bench-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return Path(tempfile.mkdtemp(dir=_SCRATCH[0]))


async def _orchestrated(n: int, agent: type[CallingAgent], *, timed: bool = True) -> float:
    """Seconds for ``Orchestrator.run`` of n tasks (building and cleanup excluded).  A
    timed run also records its calling phase (:data:`LAST_PHASE_S`); an untimed one lets
    each task end as soon as its agent made its calls (the memory runs)."""
    orch = Orchestrator(bench_config(_run_dir(), n), provider=InstantProvider(),
                        agents={"bench": agent})
    phase = _PHASE[0] = _Phase(n) if timed else None
    cpu, loop_cpu, start = time.process_time(), time.thread_time(), default_timer()
    try:
        report = await orch.run()
    finally:
        _PHASE[0] = None
    elapsed = default_timer() - start
    LAST_CPU_S[0] = time.process_time() - cpu
    LAST_LOOP_CPU_S[0] = time.thread_time() - loop_cpu
    if phase is not None:
        LAST_PHASE_S[0] = (phase.wall - start, phase.cpu - cpu, phase.loop_cpu - loop_cpu)
    bad = [o for o in report.outcomes.values() if o.status != "completed"]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not complete: {bad[0].reason}")
    return elapsed


async def _bare(n: int, calls: int) -> float:
    """The same calls on bare asyncio: n tasks, a semaphore of the pool's size."""
    provider = InstantProvider()
    sem = asyncio.Semaphore(POOL)
    request = CompletionRequest(model="sonnet", model_id="claude-sonnet-4-6",
                                messages=MESSAGES, max_tokens=256)

    async def agent() -> None:
        for _ in range(calls):
            async with sem:
                await provider.complete(request)

    start = default_timer()
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(agent())
    return default_timer() - start


def _files(n: int) -> tuple[float, float]:
    """(wall, CPU) seconds of n tasks' end-of-task files, written in line: the disk's part."""
    tmp = _run_dir()
    cpu, start = time.process_time(), default_timer()
    for i in range(n):
        folder = private_dir(tmp / "tasks" / f"t{i}")
        write_private(folder / "usage.json", '{"usage": {}}')
        write_private(folder / "result.json", '{"result": null}')
    return default_timer() - start, time.process_time() - cpu


def _run(fn: Callable[[], Awaitable[float]]) -> float:
    gc.collect()
    return anyio.run(fn, backend="asyncio")


def _peak_kib(fn: Callable[[], Awaitable[float]]) -> float:
    """Peak KiB of Python allocations during ``fn`` above the memory before it."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        anyio.run(fn, backend="asyncio")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - base) / 1024


@contextmanager
def _collector_as_run() -> Iterator[None]:
    """The collector as ``vibe-engine run`` sets it, for the block; then the defaults."""
    old = gc.get_threshold()
    tune_collector()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)


_PerCall = tuple[float, float, float]


def _pair(n: int) -> tuple[_PerCall, float, float, float]:
    """A 0-call and a 2-call run: the (wall, CPU, loop thread's CPU) seconds per call of
    their calling phases' difference, the 0-call run's wall and CPU seconds, and the
    2-call run's wall seconds."""
    idle = _run(lambda: _orchestrated(n, IdleAgent))
    idle_cpu, idle_phase = LAST_CPU_S[0], LAST_PHASE_S[0]
    calls = _run(lambda: _orchestrated(n, CallingAgent))
    c, i = LAST_PHASE_S[0], idle_phase
    per_call = tuple(max(c[k] - i[k], 0.0) / (CALLS * n) for k in range(3))
    return (per_call[0], per_call[1], per_call[2]), idle, idle_cpu, calls


def _medians(per_calls: list[_PerCall]) -> _PerCall:
    wall, cpu, loop_cpu = (statistics.median(p[k] for p in per_calls) for k in range(3))
    return wall, cpu, loop_cpu


def _tuned_pairs(n: int, repeat: int) -> _PerCall:
    """Median wall, CPU and loop-thread CPU seconds per call of ``repeat`` pairs of runs,
    with the collector as ``vibe-engine run`` sets it."""
    with _collector_as_run():
        per_calls = []
        for i in range(repeat):
            progress(f"agents_{n}: run {i + 1}/{repeat}, collector as in vibe-engine run")
            per_calls.append(_pair(n)[0])
    return _medians(per_calls)


def size(n: int, repeat: int) -> dict[str, float]:
    """The orchestrator-path figures of one size (medians of ``repeat`` runs)."""
    per_calls, calls, idle, cpu_idle, bare, files = [], [], [], [], [], []
    for i in range(repeat):
        progress(f"agents_{n}: run {i + 1}/{repeat}")
        phases, t_idle, c_idle, t_calls = _pair(n)
        per_calls.append(phases)
        idle.append(t_idle)
        cpu_idle.append(c_idle)
        calls.append(t_calls)
        files.append(_files(n))
        bare.append(_run(lambda: _bare(n, CALLS)))
    t_calls, t_idle, t_bare = (statistics.median(x) for x in (calls, idle, bare))
    c_idle = statistics.median(cpu_idle)
    per_call, cpu_per_call, _ = _medians(per_calls)
    bare_per_call = t_bare / (CALLS * n) * 1e6
    tuned, cpu_tuned, loop_cpu_tuned = _tuned_pairs(n, repeat)
    progress(f"agents_{n}: memory")
    kib = _peak_kib(lambda: _orchestrated(n, CallingAgent, timed=False)) / n
    bare_kib = _peak_kib(lambda: _bare(n, CALLS)) / n
    return {
        "us_per_call": round(tuned * 1e6, 1),
        "us_per_call_default_gc": round(per_call * 1e6, 1),
        "bare_us_per_call": round(bare_per_call, 2),
        "ratio_to_bare": round(tuned * 1e6 / bare_per_call, 1) if bare_per_call else 0.0,
        "us_per_task": round(t_idle / n * 1e6, 1),
        "cpu_us_per_call": round(cpu_tuned * 1e6, 1),
        "loop_cpu_us_per_call": round(loop_cpu_tuned * 1e6, 1),
        "cpu_us_per_call_default_gc": round(cpu_per_call * 1e6, 1),
        "cpu_us_per_task": round(c_idle / n * 1e6, 1),
        "fs_us_per_task": round(statistics.median(f[0] for f in files) / n * 1e6, 1),
        "cpu_fs_us_per_task": round(statistics.median(f[1] for f in files) / n * 1e6, 1),
        "us_per_call_with_task": round(t_calls / (CALLS * n) * 1e6, 1),
        "calls_per_s": round(CALLS * n / t_calls),
        "kib_per_agent": round(kib, 2),
        "bare_kib_per_agent": round(bare_kib, 2),
    }


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="the governed call path vs a bare loop")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 60 s")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per figure")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP figures")
    parser.add_argument("--only", choices=["1000", "10000", "http"], help="one part only")
    return parser.parse_args()


def main() -> None:
    args = _args()
    configure_logging(level="info", json_logs=True)  # what `vibe-engine run` logs
    sizes = {"agents_1000": 200, "agents_10000": 1000} if args.quick else {
        "agents_1000": 1000, "agents_10000": 10_000}
    repeat = args.repeat or (1 if args.quick else 3)
    progress("warm-up run (imports, tiktoken tables)")
    _run(lambda: _orchestrated(50, CallingAgent))
    results: dict[str, Any] = {key: size(n, repeat) for key, n in sizes.items()
                               if args.only is None or key == f"agents_{args.only}"}
    if args.only not in (None, "http"):
        args.no_http = True
    if not args.no_http:
        from benchmarks._gateway_http import http_results
        results["http"] = http_results(quick=args.quick, repeat=repeat)
    emit("gateway", {"agents": sizes, "calls_per_agent": CALLS, "pool": POOL,
                     "repeat": repeat, "store": "sqlite", "loop": "asyncio",
                     "memory": "tracemalloc peak above baseline"},
         results, ("anyio", "anthropic", "httpx2", "httptools", "uvicorn", "starlette", "tiktoken",
                   "pydantic", "structlog"), args.json)


if __name__ == "__main__":
    main()
