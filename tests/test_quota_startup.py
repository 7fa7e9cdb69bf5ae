"""A fleet of orchestrators on one shared quota starts as fast as the quota allows (R5.4,
#21 scale-out): the first slices come with the provider's burst, and a newcomer gets its
share within a poll, not at the others' next renewal -- while the fleet together still
admits no more than one bucket of the provider's size.

The orchestrators run in one process on the virtual clock; their stores share
:class:`~tests._fakes.BucketSlices`, which cuts slices as the Redis script does (the
script itself is checked against it on the real Redis in ``test_quota_slices_redis.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import Limits, TaskSpec, VibeConfig
from scheduler.runtime import AgentContext, Orchestrator
from scheduler.testing import build_orchestrator
from tests._fakes import BucketSlices, BucketSlicingStore, Busy, Clocked

pytestmark = pytest.mark.anyio



class Calls:
    """Three calls asking for 4096 output tokens each."""

    async def run(self, ctx: AgentContext) -> str:
        for _ in range(3):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=4096)
        return "ok"



def _fleet(tmp_path: Path, shared: BucketSlices, starts: list[float], agent: type,
           pools: dict[str, Any] | None = None, n: int = 3) -> list[Orchestrator]:
    def one(name: str) -> Orchestrator:
        config = VibeConfig.model_validate({
            "state_dir": tmp_path / name, "store": "memory", "session_id": name,
            "observe": {"status_interval_s": None, "history": False},
            **({"allocator": {"pools": pools}} if pools else {}),
            "distributed": {"orchestrator_id": name},
        })
        return build_orchestrator({"agent": agent}, config=config, provider=Clocked(starts),
                                  store=BucketSlicingStore(shared))
    return [one(f"o{i}") for i in range(n)]


def _specs(n: int) -> list[TaskSpec]:
    return [TaskSpec(id=f"t{j}", agent="agent", prompt="What is it?",
                     budget=Limits(time_s=3600)) for j in range(n)]


async def test_r5_4_replicas_joining_a_running_one_get_their_share_at_once(
    tmp_path: Path,
) -> None:
    """R5.4: under the default pool (400,000 tokens and 1,000 requests a minute, shared),
    one orchestrator starts and takes the whole quota; two more join 0.2 s later.  All
    45 calls of ~4,100 tokens (15 each, three in a row per task, 0.5 s per call; 185,000
    tokens, under half the burst the quota allows) start within 2.5 virtual seconds.
    Before, the first slice started with an empty bucket (6,700 tokens a second), and the
    newcomers got nothing until the first one renewed (``renew_s``, 5 s)."""
    shared = BucketSlices()
    starts: list[float] = []
    orchs = _fleet(tmp_path, shared, starts, Calls)

    async def join(orch: Orchestrator) -> None:
        await anyio.sleep(0.2)
        await orch.run(_specs(5))

    with anyio.move_on_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(orchs[0].run, _specs(5))
            for orch in orchs[1:]:
                tg.start_soon(join, orch)
    assert len(starts) == 45
    assert max(starts) < 2.5, sorted(starts)
    assert [o.tracker.session.totals.calls for o in orchs] == [15, 15, 15]


async def test_r5_4_a_fleet_bursts_one_bucket_of_the_shared_quota_not_one_each(
    tmp_path: Path,
) -> None:
    """R5.4: under a shared 10 requests a minute, three orchestrators (three busy tasks of
    20 calls each) make the provider's burst of 10 calls at once, then never more than one
    bucket allows: by any time t, at most 10 + 10 × t/60 calls together -- not three
    bursts.  Each gets calls."""
    shared = BucketSlices()
    starts: list[float] = []
    orchs = _fleet(tmp_path, shared, starts, Busy,
                   pools={"anthropic": {"requests_per_minute": 10, "tokens_per_minute": None}})
    with anyio.move_on_after(300):
        async with anyio.create_task_group() as tg:
            for orch in orchs:
                tg.start_soon(orch.run, _specs(3))
    assert sum(1 for s in starts if s < 1.0) == 10  # the burst, at once
    for t in starts:
        assert sum(1 for s in starts if s <= t) <= 10 + 10 * t / 60 + 1e-6, t
    assert len(starts) >= 50  # 300 s: the burst, then nearly 10 a minute
    assert all(o.tracker.session.totals.calls > 0 for o in orchs)
