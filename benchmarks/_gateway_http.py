"""The governed path over real HTTP (the ``http`` figures of :mod:`benchmarks.gateway`).

The server is a minimal Messages endpoint (:mod:`benchmarks._fast_api`: Starlette on
uvicorn, a fixed answer) in its own process, so it does not share this process's
interpreter lock.  (The project's fake API counts tokens and sends rate-limit headers
that would throttle the governed side once its per-minute request count ran out.)  Both sides use
the real ``anthropic`` SDK over real sockets, in the same run:

* ``direct`` — ``AsyncAnthropic.messages.create`` called straight, on the SDK's default
  HTTP client (httpx over httpcore's connection pool);
* ``governed`` — an orchestrator (``provider.kind = "anthropic"``, the SQLite store,
  default settings otherwise) whose agents call ``ctx.llm.complete``: the provider runs
  the same SDK on its own keep-alive transport (``agents.providers._transport``).

``concurrency_1``: one agent making calls one after another; each call's latency as
the agent sees it.  ``added_median_ms`` / ``added_p99_ms`` are governed − direct.
``concurrency_64``: 64 agents (64 coroutines directly) calling at once;
``throughput_ratio`` = governed calls/s ÷ direct calls/s, both counted from the first
call's start to the last call's end: the direct side's client is built before its clock
starts, so the governed side's one-off start and finish (opening the store, writing the
usage files at exit) are left out too; ``run_throughput_ratio`` counts the whole
``Orchestrator.run`` instead.  ``cpu_ms_per_call``: this process's CPU time (all
threads) over the same window ÷ calls, less disturbed by other jobs than the wall time.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from timeit import default_timer
from typing import Any

import anthropic
import anyio

from agents import make_provider
from benchmarks._common import progress
from benchmarks.gateway import MESSAGES, bench_config
from scheduler.runtime import Orchestrator

MODEL_ID = "claude-haiku-4-5"
KEY_ENV = "VIBE_BENCH_API_KEY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FastApiProcess:
    """``python -m benchmarks._fast_api`` on a free port, stopped on exit."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FastApiProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._fast_api", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=0.5):
                    return self
            except (urllib.error.URLError, ConnectionError):
                anyio.run(anyio.sleep, 0.05)
        raise RuntimeError("the benchmark server did not start")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


@dataclass
class Run:
    """One side's run: each call's latency and the window in which calls ran."""

    latencies: list[float]
    elapsed_s: float = 0.0  # the whole run (the task group, or ``Orchestrator.run``)
    first: tuple[float, float] | None = None  # (wall, CPU) at the first call's start
    last: tuple[float, float] = (0.0, 0.0)  # (wall, CPU) at the latest call's end

    def started(self) -> float:
        now = default_timer()
        if self.first is None:
            self.first = (now, time.process_time())
        return now

    def ended(self, start: float) -> None:
        self.last = (default_timer(), time.process_time())
        self.latencies.append(self.last[0] - start)

    @property
    def window_s(self) -> float:
        assert self.first is not None
        return self.last[0] - self.first[0]

    @property
    def cpu_ms_per_call(self) -> float:
        assert self.first is not None
        return (self.last[1] - self.first[1]) / len(self.latencies) * 1e3


class _Timed:
    """An agent making ``calls`` calls, timing each one in ``run_``."""

    calls = 0
    run_: Run

    async def run(self, ctx: Any) -> None:
        for _ in range(self.calls):
            start = self.run_.started()
            await ctx.llm.complete(MESSAGES, max_tokens=64, model="haiku")
            self.run_.ended(start)


async def _governed(url: str, agents: int, calls: int) -> Run:
    run = Run([])
    timed = type("Timed", (_Timed,), {"calls": calls, "run_": run})
    with tempfile.TemporaryDirectory(prefix="vibe-bench-http-") as tmp:
        config = bench_config(
            Path(tmp), agents, pool=agents,
            provider={"kind": "anthropic", "base_url": url, "api_key_env": KEY_ENV,
                      "max_retries": 0})
        orch = Orchestrator(config, provider=make_provider(config), agents={"bench": timed})
        start = default_timer()
        report = await orch.run()
        run.elapsed_s = default_timer() - start
    bad = [o for o in report.outcomes.values() if o.status != "completed"]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not complete: {bad[0].reason}")
    return run


async def _direct(url: str, agents: int, calls: int) -> Run:
    client = anthropic.AsyncAnthropic(api_key="bench", base_url=url, max_retries=0)
    run = Run([])

    async def agent() -> None:
        for _ in range(calls):
            start = run.started()
            await client.messages.create(model=MODEL_ID, max_tokens=64,
                                         messages=MESSAGES)  # type: ignore[arg-type]
            run.ended(start)

    start = default_timer()
    async with anyio.create_task_group() as tg:
        for _ in range(agents):
            tg.start_soon(agent)
    run.elapsed_s = default_timer() - start
    await client.close()
    return run


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1e3, 3)


def http_results(*, quick: bool, repeat: int) -> dict[str, Any]:
    """The ``http`` figures: added latency at concurrency 1, throughput ratio at 64."""
    os.environ.setdefault(KEY_ENV, "bench-key")
    serial, parallel = (100, 10) if quick else (400, 30)
    c1: dict[str, list[float]] = {k: [] for k in ("median", "p99", "direct", "cpu_d", "cpu_g")}
    c64: dict[str, list[float]] = {k: [] for k in ("window", "run", "cpu_d", "cpu_g")}
    with FastApiProcess() as server:
        anyio.run(_direct, server.url, 1, 20, backend="asyncio")  # warm-up
        anyio.run(_governed, server.url, 1, 20, backend="asyncio")
        for i in range(repeat):
            progress(f"http: run {i + 1}/{repeat}")
            direct = anyio.run(_direct, server.url, 1, serial, backend="asyncio")
            governed = anyio.run(_governed, server.url, 1, serial, backend="asyncio")
            d, g = direct.latencies, governed.latencies
            c1["median"].append(statistics.median(g) - statistics.median(d))
            c1["p99"].append(_p99(g) - _p99(d))
            c1["direct"].append(statistics.median(d))
            c1["cpu_d"].append(direct.cpu_ms_per_call / 1e3)
            c1["cpu_g"].append(governed.cpu_ms_per_call / 1e3)
            direct = anyio.run(_direct, server.url, 64, parallel, backend="asyncio")
            governed = anyio.run(_governed, server.url, 64, parallel, backend="asyncio")
            c64["window"].append(direct.window_s / governed.window_s)
            c64["run"].append(direct.elapsed_s / governed.elapsed_s)
            c64["cpu_d"].append(direct.cpu_ms_per_call / 1e3)
            c64["cpu_g"].append(governed.cpu_ms_per_call / 1e3)
    return {
        "server": "benchmarks._fast_api (starlette + uvicorn) in a subprocess",
        "concurrency_1": {
            "added_median_ms": _median_ms(c1["median"]),
            "added_p99_ms": _median_ms(c1["p99"]),
            "direct_median_ms": _median_ms(c1["direct"]),
            "cpu_ms_per_call": {"direct": _median_ms(c1["cpu_d"]),
                                "governed": _median_ms(c1["cpu_g"])},
            "calls": serial,
        },
        "concurrency_64": {
            "throughput_ratio": round(statistics.median(c64["window"]), 3),
            "run_throughput_ratio": round(statistics.median(c64["run"]), 3),
            "cpu_ms_per_call": {"direct": _median_ms(c64["cpu_d"]),
                                "governed": _median_ms(c64["cpu_g"])},
            "calls": 64 * parallel,
        },
    }
