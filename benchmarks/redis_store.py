"""RedisStore throughput: shared charges and lease grants, beside raw redis-py INCRBY.

    python -m benchmarks.redis_store --json [--quick]

* ``charges_per_s`` — complete shared charges: an atomic hold of the estimate on
  the session and day scopes (``try_reserve``), then the settle that records the
  event (task, session, day totals; idempotency key) and releases the hold, all in
  Lua — two round trips per charge, as the gateway does per model call.
* ``lease_grants_per_s`` — slice leases/renewals of one global pool (max-min fair
  grant over all live holders, Lua).
* ``raw_incrby_per_s`` — the baseline: a bare ``INCRBY`` through redis.asyncio, the
  same client, connection pool and concurrency, in the same run.

``one_process`` runs each in this process; ``three_processes`` runs each in 3
worker processes at once against the same keys and reports their sum (ops over
the wall time from the first start to the last end).  Every figure is the median
of ``--repeat`` runs.  Needs Redis on 127.0.0.1:6379 (``VIBE_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import anyio

from scheduler.core import Usage, UsageEvent
from scheduler.store._ledger import ScopeLimit
from scheduler.store._redis import RedisStore

URL = os.environ.get("VIBE_REDIS_URL", "redis://127.0.0.1:6379/0")
KINDS = ("charges", "lease_grants", "raw_incrby")
CONCURRENCY = 16


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


async def _run_kind(
    kind: str, n: int, ns: str, worker: str, spool: Path, at: float = 0.0
) -> tuple[float, float]:
    """Do ``n`` operations of ``kind`` with CONCURRENCY tasks from ``at`` (a
    ``perf_counter`` time shared by the workers); return (start, end) times."""
    store = RedisStore(URL, namespace=ns, spool_path=spool)
    await store.open()
    await anyio.sleep(max(at - time.perf_counter(), 0.0))
    limits = (ScopeLimit("session:bench", tokens=10**15), ScopeLimit("day:2026-11-27"))
    conn = store._link.client  # the same client and pool for the raw baseline
    counter = store.key("raw", "counter")
    per_task = n // CONCURRENCY

    async def charges(t: int) -> None:
        for i in range(per_task):
            hid = f"{worker}:{t}:{i}"
            hold = await store.try_reserve(hid, limits, model="sonnet", tokens=500,
                                           cost_usd=0.001)
            ev = UsageEvent(hid, f"task-{worker}-{t}", "bench", "2026-11-27", 0.0,
                            model="sonnet", usage=Usage(300, 100), cost_usd=0.001)
            await store.settle(ev, hold)

    async def grants(t: int) -> None:
        for _ in range(per_task):
            await store.lease_slice("tpm", f"{worker}:{t}", demand=100_000,
                                    capacity=1_000_000, ttl_s=30.0)

    async def raw(t: int) -> None:
        for _ in range(per_task):
            await conn.incrby(counter, 500)

    body: Callable[[int], Coroutine[Any, Any, None]] = {
        "charges": charges, "lease_grants": grants, "raw_incrby": raw,
    }[kind]
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for t in range(CONCURRENCY):
            tg.start_soon(body, t)
    end = time.perf_counter()
    await store.aclose()
    return start, end


def one_process(kind: str, n: int, ns: str, spool: Path) -> float:
    start, end = anyio.run(_run_kind, kind, n, ns, "p0", spool, backend="asyncio")
    return (n // CONCURRENCY * CONCURRENCY) / (end - start)


def three_processes(kind: str, n: int, ns: str, tmp: Path) -> float:
    at = time.perf_counter() + 3.0  # all three start together, after their imports
    cmd = [sys.executable, "-m", "benchmarks.redis_store", "--worker", kind, "--n", str(n),
           "--ns", ns, "--at", repr(at)]
    procs = [
        subprocess.Popen([*cmd, "--name", f"w{i}", "--spool", str(tmp / f"w{i}.spool")],
                         stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
        for i in range(3)
    ]
    spans = [json.loads(p.communicate()[0]) for p in procs]
    done = sum(s["ops"] for s in spans)
    return float(done / (max(s["end"] for s in spans) - min(s["start"] for s in spans)))


def cleanup(ns: str) -> None:
    import redis

    client = redis.Redis.from_url(URL)
    keys = list(client.scan_iter(match=f"vibe:\\{{{ns}\\}}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])
    client.close()


def measure(quick: bool, repeat: int) -> tuple[dict[str, Any], dict[str, Any]]:
    n = 1_600 if quick else 16_000
    sizes = {"ops_per_process": n, "concurrency_per_process": CONCURRENCY, "repeat": repeat,
             "quick": quick}
    results: dict[str, dict[str, float]] = {"one_process": {}, "three_processes": {}}
    with TemporaryDirectory() as d:
        tmp = Path(d)
        for kind in KINDS:
            for mode in ("one_process", "three_processes"):
                runs: list[float] = []
                for _ in range(repeat):
                    ns = f"bench-{uuid.uuid4().hex[:8]}"
                    try:
                        if mode == "one_process":
                            runs.append(one_process(kind, n, ns, tmp / "p0.spool"))
                        else:
                            runs.append(three_processes(kind, n, ns, tmp))
                    finally:
                        cleanup(ns)
                results[mode][f"{kind}_per_s"] = round(statistics.median(runs), 1)
                log(f"{mode} {kind}: {results[mode][f'{kind}_per_s']:.0f}/s  runs={runs}")
    for figures in results.values():
        raw = figures["raw_incrby_per_s"]
        figures["charges_vs_raw"] = round(figures["charges_per_s"] / raw, 3)
        figures["lease_grants_vs_raw"] = round(figures["lease_grants_per_s"] / raw, 3)
    return sizes, results


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("redis", "anyio"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    import redis

    client = redis.Redis.from_url(URL)
    out["redis-server"] = str(client.info("server")["redis_version"])
    client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="smaller sizes, under 60 s")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ns", default="", help=argparse.SUPPRESS)
    p.add_argument("--name", default="w", help=argparse.SUPPRESS)
    p.add_argument("--spool", default="", help=argparse.SUPPRESS)
    p.add_argument("--at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        start, end = anyio.run(_run_kind, args.worker, args.n, args.ns, args.name,
                               Path(args.spool), args.at, backend="asyncio")
        ops = args.n // CONCURRENCY * CONCURRENCY
        sys.stdout.write(json.dumps({"start": start, "end": end, "ops": ops}) + "\n")
        return
    repeat = args.repeat or 3
    sizes, results = measure(args.quick, repeat)
    doc = {
        "benchmark": "redis_store", "sizes": sizes, "python": platform.python_version(),
        "versions": _versions(), "results": results,
    }
    sys.stdout.write(json.dumps(doc, indent=None if args.json else 2) + "\n")


if __name__ == "__main__":
    main()
