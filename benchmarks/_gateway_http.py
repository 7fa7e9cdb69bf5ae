"""The governed path over real HTTP (the ``http`` figures of :mod:`benchmarks.gateway`).

The server is a minimal Messages endpoint (:mod:`benchmarks._fast_api`: Starlette on
uvicorn, a fixed answer) in its own process, so it does not share this process's
interpreter lock.  (The project's fake API counts tokens and sends rate-limit headers
that would throttle the governed side once its per-minute request count ran out.)  Both sides use
the real ``anthropic`` SDK over real sockets, in the same run:

* ``direct`` — ``AsyncAnthropic.messages.create`` called straight;
* ``governed`` — an orchestrator (``provider.kind = "anthropic"``, the SQLite store,
  default settings otherwise) whose agents call ``ctx.llm.complete``.

``concurrency_1``: one agent making calls one after another; each call's latency as
the agent sees it.  ``added_median_ms`` / ``added_p99_ms`` are governed − direct.
``concurrency_64``: 64 agents (64 coroutines directly) calling at once;
``throughput_ratio`` = governed calls/s ÷ direct calls/s.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
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


class _Timed:
    """An agent making ``calls`` calls, recording each one's latency (seconds)."""

    calls = 0
    latencies: list[float] = []

    async def run(self, ctx: Any) -> None:
        for _ in range(self.calls):
            start = default_timer()
            await ctx.llm.complete(MESSAGES, max_tokens=64, model="haiku")
            type(self).latencies.append(default_timer() - start)


async def _governed(url: str, agents: int, calls: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    timed = type("Timed", (_Timed,), {"calls": calls, "latencies": latencies})
    with tempfile.TemporaryDirectory(prefix="vibe-bench-http-") as tmp:
        config = bench_config(
            Path(tmp), agents, pool=agents,
            provider={"kind": "anthropic", "base_url": url, "api_key_env": KEY_ENV,
                      "max_retries": 0})
        orch = Orchestrator(config, provider=make_provider(config), agents={"bench": timed})
        start = default_timer()
        report = await orch.run()
        elapsed = default_timer() - start
    bad = [o for o in report.outcomes.values() if o.status != "completed"]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not complete: {bad[0].reason}")
    return latencies, elapsed


async def _direct(url: str, agents: int, calls: int) -> tuple[list[float], float]:
    client = anthropic.AsyncAnthropic(api_key="bench", base_url=url, max_retries=0)
    latencies: list[float] = []

    async def agent() -> None:
        for _ in range(calls):
            t = default_timer()
            await client.messages.create(model=MODEL_ID, max_tokens=64,
                                         messages=MESSAGES)  # type: ignore[arg-type]
            latencies.append(default_timer() - t)

    start = default_timer()
    async with anyio.create_task_group() as tg:
        for _ in range(agents):
            tg.start_soon(agent)
    elapsed = default_timer() - start
    await client.close()
    return latencies, elapsed


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def http_results(*, quick: bool, repeat: int) -> dict[str, Any]:
    """The ``http`` figures: added latency at concurrency 1, throughput ratio at 64."""
    os.environ.setdefault(KEY_ENV, "bench-key")
    serial, parallel = (100, 10) if quick else (400, 30)
    c1: dict[str, list[float]] = {"median": [], "p99": [], "direct_median": []}
    ratio: list[float] = []
    with FastApiProcess() as server:
        anyio.run(_direct, server.url, 1, 20, backend="asyncio")  # warm-up
        anyio.run(_governed, server.url, 1, 20, backend="asyncio")
        for i in range(repeat):
            progress(f"http: run {i + 1}/{repeat}")
            direct, _ = anyio.run(_direct, server.url, 1, serial, backend="asyncio")
            governed, _ = anyio.run(_governed, server.url, 1, serial, backend="asyncio")
            c1["median"].append(statistics.median(governed) - statistics.median(direct))
            c1["p99"].append(_p99(governed) - _p99(direct))
            c1["direct_median"].append(statistics.median(direct))
            _, t_direct = anyio.run(_direct, server.url, 64, parallel, backend="asyncio")
            _, t_governed = anyio.run(_governed, server.url, 64, parallel, backend="asyncio")
            ratio.append(t_direct / t_governed)
    calls = 64 * parallel
    return {
        "server": "benchmarks._fast_api (starlette + uvicorn) in a subprocess",
        "concurrency_1": {
            "added_median_ms": round(statistics.median(c1["median"]) * 1e3, 3),
            "added_p99_ms": round(statistics.median(c1["p99"]) * 1e3, 3),
            "direct_median_ms": round(statistics.median(c1["direct_median"]) * 1e3, 3),
            "calls": serial,
        },
        "concurrency_64": {
            "throughput_ratio": round(statistics.median(ratio), 3),
            "calls": calls,
        },
    }
