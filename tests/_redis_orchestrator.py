"""One orchestrator process for the multi-process Redis tests (run as a script).

``N`` agents share this process's slice of a global tokens-per-minute pool and
one session budget with the other processes:

* the slice comes from :class:`~scheduler.allocator._quota.GlobalQuota` leases on Redis;
  ``on_slice`` sets the refill rate of a small token bucket that stands in for
  the local allocator's ``set_capacity`` (the allocator lands separately);
* every call is admitted through ``Tracker.reserve_shared`` (the atomic Redis
  hold on the shared session) and settled through ``Tracker.charge``.

Each line of ``--log`` is a JSON record: ``started``, ``slice`` (amount),
``grant`` (pool tokens taken), ``event`` (an event id *after* it was recorded),
``done``.  Times are ``time.perf_counter()`` (system-wide monotonic on Linux).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import IO, Any

import anyio

from scheduler import BudgetExceededError, Limits, TaskSpec, Usage, VibeConfig
from scheduler.allocator._quota import open_global_quota
from scheduler.budget import Tracker, resolve_task
from scheduler.core import StoreUnavailableError
from scheduler.observe import configure_logging
from scheduler.store._redis import RedisStore


class Bucket:
    """Token bucket refilled at the slice's rate (tokens per minute ÷ 60)."""

    def __init__(self) -> None:
        self.rate = 0.0
        self.level = 0.0
        self.stamp = anyio.current_time()

    def set_tokens_per_minute(self, tpm: int) -> None:
        self._refill()
        self.rate = tpm / 60.0

    def _refill(self) -> None:
        now = anyio.current_time()
        self.level = min(self.level + (now - self.stamp) * self.rate, max(self.rate * 0.2, 1.0))
        self.stamp = now

    async def acquire(self, n: int) -> None:
        while True:
            self._refill()
            if self.level >= n or (self.level >= self.rate * 0.2 > 0):
                self.level -= n
                return
            wait = (n - self.level) / self.rate if self.rate > 0 else 0.05
            await anyio.sleep(min(max(wait, 0.002), 0.05))


class Run:
    def __init__(self, args: argparse.Namespace, log: IO[str]) -> None:
        self.args = args
        self.log = log
        self.cfg = VibeConfig.model_validate({
            "budgets": {"session": Limits(tokens=args.budget), "day": Limits(),
                        "weekend_day_cost_usd": None},
            "distributed": {
                "namespace": args.namespace, "slice_ttl_s": args.ttl, "renew_s": args.renew,
                "hold_ttl_s": args.hold_ttl, "socket_timeout_s": 1.0,
                "unavailable_wait_s": 30.0, "failure_mode": args.failure_mode,
            },
        })
        self.store = RedisStore(args.url, config=self.cfg.distributed,
                                spool_path=Path(args.log).with_suffix(".spool"))
        self.tracker = Tracker(self.store, self.cfg, session_id="shared")
        self.bucket: Bucket

    def emit(self, kind: str, **data: Any) -> None:
        data.update(kind=kind, t=time.perf_counter(), name=self.args.name)
        self.log.write(json.dumps(data) + "\n")
        self.log.flush()

    def on_slice(self, pool: str, amount: int) -> None:
        self.bucket.set_tokens_per_minute(amount)
        self.emit("slice", amount=amount)

    async def main(self) -> None:
        self.bucket = Bucket()
        await self.store.open()
        await self.tracker.open()
        async with open_global_quota(
            self.store, {"tpm": self.args.capacity}, holder=self.args.name,
            config=self.cfg.distributed, on_slice=self.on_slice,
        ):
            self.emit("started")
            async with anyio.create_task_group() as tg:
                for i in range(self.args.agents):
                    tg.start_soon(self.agent, i)
        self.emit("done", pending=len(self.store.spool))
        await self.store.aclose()

    async def exhausted(self, est: int) -> bool:
        try:
            used = (await self.store.totals("session:shared")).tokens
        except StoreUnavailableError:
            return False
        return bool(used + est > self.args.budget)

    async def agent(self, i: int) -> None:
        task = f"{self.args.name}-a{i}"
        spec = TaskSpec(id=task, agent="coder", prompt="Fix the bug in parser")
        await self.tracker.start_task(task, resolve_task(spec, self.cfg), agent="coder")
        rng = random.Random(f"{self.args.name}:{i}")
        est = self.args.estimate
        while True:
            await self.bucket.acquire(est)
            try:
                r = await self.tracker.reserve_shared(task, model="sonnet", tokens=est,
                                                      cost_usd=0.0)
            except BudgetExceededError:
                if await self.exhausted(est):
                    return
                await anyio.sleep(0.05)  # held by calls in flight (or a dead process)
                continue
            self.emit("grant", tokens=est)
            await anyio.sleep(rng.uniform(self.args.call_min, self.args.call_max))  # the call
            actual = rng.randint(est // 2, est)
            event = self.tracker.make_event(
                task, model="sonnet", usage=Usage(actual // 2, actual - actual // 2)
            )
            await self.tracker.charge(event, r)
            self.emit("event", id=event.event_id, tokens=actual)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--agents", type=int, default=30)
    p.add_argument("--budget", type=int, default=120_000)
    p.add_argument("--capacity", type=int, default=1_200_000)
    p.add_argument("--estimate", type=int, default=500)
    p.add_argument("--ttl", type=float, default=1.0)
    p.add_argument("--renew", type=float, default=0.25)
    p.add_argument("--hold-ttl", type=float, default=2.0)
    p.add_argument("--failure-mode", default="closed")
    p.add_argument("--call-min", type=float, default=0.01)
    p.add_argument("--call-max", type=float, default=0.03)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # an application using the library: its log lines (spooling, replay) appear only
    # once it configures logging, and the tests read them from stderr
    configure_logging(level="info", json_logs=True)
    with open(args.log, "a", encoding="utf-8") as log:
        run = Run(args, log)
        anyio.run(run.main, backend="asyncio")


if __name__ == "__main__":
    main()
