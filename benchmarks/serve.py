"""What ``vibe-engine serve`` adds to a Messages API call (#21).

    python -m benchmarks.serve --json [--quick] [--repeat N] [--profile OUT.prof]

The official ``anthropic`` SDK (``AsyncAnthropic``, no retries) calls the same upstream
directly and through ``vibe-engine serve`` (a subprocess with a temporary config: one
client key, SQLite store, the pool's quota set out of the way so only the path is
measured), in one run, alternating between the two so drift on a shared machine hits
both alike.  The upstream is :mod:`benchmarks._fixed_upstream` (one fixed answer, no
work) in a process of its own.

* ``concurrency_1``: sequential non-streamed calls in alternating blocks of 50;
  ``added_median_ms`` and ``added_p99_ms`` are serve's median and p99 latency minus the
  direct ones; ``added_stream_median_ms`` the same for streamed calls (to the end of the
  stream); ``serve_cpu_ms_per_call`` the CPU the serve process spent per call (from
  /proc), which is what serve adds on an idle machine.
* ``concurrency_64``: 64 calls in flight from one client; ``throughput_ratio`` is the
  median over alternating run pairs of calls per second through serve ÷ direct.
* ``load_average``: the machine's 1-minute load before and after (it is shared).

``--profile OUT.prof`` runs serve under cProfile (CPU time) and writes the profile at
its end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import anthropic
import anyio

from benchmarks._common import emit, progress

KEY = "sk-bench-client-key"
MODEL = "claude-haiku-4-5"
HELLO: Any = [{"role": "user", "content": "Say hello in five words."}]
CONCURRENCY = 64
#: Calls in one block at concurrency 1 (blocks alternate between the two sides).
BLOCK = 50
PACKAGES = ("anthropic", "httpx2", "uvicorn", "starlette", "anyio", "uvloop", "httptools")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 60 s")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per side at concurrency 64")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile serve to this file")
    return parser.parse_args()


def _config(root: Path, upstream: str) -> Path:
    path = root / "serve.toml"
    path.write_text(f"""\
state_dir = "{root / 'state'}"
store = "sqlite"
[budgets]
weekend_day_cost_usd = 1000000
[budgets.session]
tokens = 1000000000000
tokens_by_model = {{}}
[budgets.day]
cost_usd = 1000000
[allocator.pools.anthropic]
tokens_per_minute = 1000000000000
requests_per_minute = 1000000000
concurrent = 1024
[serve]
upstream_base_url = "{upstream}"
[[serve.keys]]
name = "bench"
key_env = "VIBE_BENCH_KEY"
priority = "user_waiting"
""")
    return path


def _start(argv: list[str], env: dict[str, str], ready: str, from_stderr: bool
           ) -> tuple[subprocess.Popen[str], str]:
    """A process, and the URL it announces on its first line saying ``ready``."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    stream = proc.stderr if from_stderr else proc.stdout
    assert stream is not None
    for line in stream:
        if ready in line:
            url = next(w for w in line.split() if w.startswith("http://"))
            # keep reading what it says, or a full pipe would stall it mid-benchmark
            threading.Thread(target=stream.read, daemon=True).start()
            return proc, url.rstrip(";,")
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not start: {proc.communicate()}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down; a profile is written
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


async def _call(client: anthropic.AsyncAnthropic, stream: bool) -> None:
    if stream:
        async with client.messages.stream(model=MODEL, max_tokens=16, messages=HELLO) as s:
            await s.get_final_message()
    else:
        await client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)


async def _latencies(client: anthropic.AsyncAnthropic, n: int, stream: bool) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await _call(client, stream)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _throughput(client: anthropic.AsyncAnthropic, n: int) -> float:
    per_task = n // CONCURRENCY

    async def worker() -> None:
        for _ in range(per_task):
            await _call(client, False)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(worker)
    return per_task * CONCURRENCY / (time.perf_counter() - t0)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98]


async def _interleaved(run: Callable[[str], Awaitable[list[float]]], blocks: int
                       ) -> dict[str, list[float]]:
    """``blocks`` short blocks per side, alternating (ABBA…): a shift in the machine's
    load falls on both sides alike."""
    got: dict[str, list[float]] = {"direct": [], "serve": []}
    for i in range(blocks):
        for side in (("direct", "serve") if i % 2 == 0 else ("serve", "direct")):
            got[side] += await run(side)
    return got


async def measure(direct: str, served: str, sizes: dict[str, int], pids: dict[str, int]
                  ) -> dict[str, Any]:
    clients = {"direct": anthropic.AsyncAnthropic(api_key="sk-upstream", base_url=direct,
                                                  max_retries=0),
               "serve": anthropic.AsyncAnthropic(api_key=KEY, base_url=served, max_retries=0)}
    n1, n64, runs = sizes["c1_calls_per_side"], sizes["c64_calls_per_run"], sizes["c64_runs"]
    for client in clients.values():  # connections, imports and caches warm on both sides
        await _latencies(client, 50, False)
        await _latencies(client, 10, True)
    progress(f"concurrency 1: {n1} calls per side in blocks of {BLOCK}")
    cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
    plain = await _interleaved(lambda s: _latencies(clients[s], BLOCK, False), n1 // BLOCK)
    cpu1 = {k: _cpu_s(p) for k, p in pids.items()}
    streamed = await _interleaved(lambda s: _latencies(clients[s], BLOCK, True),
                                  n1 // BLOCK // 2)
    progress(f"concurrency {CONCURRENCY}: {runs} runs of {n64} calls per side")

    async def rate(side: str) -> list[float]:
        return [await _throughput(clients[side], n64)]

    cpu2 = {k: _cpu_s(p) for k, p in pids.items()}
    rates = await _interleaved(rate, runs)
    cpu3 = {k: _cpu_s(p) for k, p in pids.items()}
    for client in clients.values():
        await client.close()
    med = {s: statistics.median(v) for s, v in plain.items()}
    p99 = {s: _p99(v) for s, v in plain.items()}
    smed = {s: statistics.median(v) for s, v in streamed.items()}
    # each serve run against the direct run next to it in time, then the median
    pairs = [s / d for s, d in zip(rates["serve"], rates["direct"], strict=True)]
    return {
        "concurrency_1": {
            "added_median_ms": round(med["serve"] - med["direct"], 3),
            "added_p99_ms": round(p99["serve"] - p99["direct"], 3),
            "added_stream_median_ms": round(smed["serve"] - smed["direct"], 3),
            "direct_median_ms": round(med["direct"], 3), "serve_median_ms": round(med["serve"], 3),
            "direct_p99_ms": round(p99["direct"], 3), "serve_p99_ms": round(p99["serve"], 3),
            # CPU the serve process spent per call: what it adds on an idle machine
            "serve_cpu_ms_per_call": _per_call(cpu0, cpu1, "serve", n1),
            "upstream_cpu_ms_per_call": _per_call(cpu0, cpu1, "upstream", 2 * n1),
        },
        f"concurrency_{CONCURRENCY}": {
            "throughput_ratio": round(statistics.median(pairs), 3),
            "direct_calls_per_s": round(statistics.median(rates["direct"]), 1),
            "serve_calls_per_s": round(statistics.median(rates["serve"]), 1),
            "pair_ratios": [round(x, 3) for x in pairs],
            "serve_cpu_ms_per_call": _per_call(cpu2, cpu3, "serve", runs * n64),
            "upstream_cpu_ms_per_call": _per_call(cpu2, cpu3, "upstream", 2 * runs * n64),
        },
    }


def _per_call(before: dict[str, float], after: dict[str, float], who: str, calls: int
              ) -> float:
    return round((after[who] - before[who]) * 1000 / calls, 3)


def main() -> None:
    args = _args()
    runs = args.repeat or (4 if args.quick else 10)
    sizes = ({"c1_calls_per_side": 300, "c64_calls_per_run": 384, "c64_runs": runs}
             if args.quick else
             {"c1_calls_per_side": 3000, "c64_calls_per_run": 1280, "c64_runs": runs})
    env = {**os.environ, "VIBE_BENCH_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    load_before = os.getloadavg()[0]
    with TemporaryDirectory(prefix="vibe-bench-serve-") as tmp:
        upstream, up_url = _start([sys.executable, "-m", "benchmarks._fixed_upstream"], env,
                                  "http://", from_stderr=False)
        serve_argv = [str(Path(sys.executable).parent / "vibe-engine"), "serve",
                      str(_config(Path(tmp), up_url)), "--port", "0"]
        if args.profile is not None:
            serve_argv = [sys.executable, "-m", "benchmarks._profiled",
                          str(args.profile.resolve()), *serve_argv[1:]]
        try:
            served, serve_url = _start(serve_argv, env, "vibe-engine serve on", from_stderr=True)
            try:
                pids = {"serve": served.pid, "upstream": upstream.pid}
                results = anyio.run(measure, up_url, serve_url, sizes, pids)
            finally:
                _stop(served)
        finally:
            _stop(upstream)
    results["load_average"] = {"before": round(load_before, 2),
                               "after": round(os.getloadavg()[0], 2)}
    results["upstream"] = "benchmarks._fixed_upstream (fixed answer, uvicorn, own process)"
    emit("serve", {**sizes, "concurrency": [1, CONCURRENCY]}, results, PACKAGES, args.json)


if __name__ == "__main__":
    main()
