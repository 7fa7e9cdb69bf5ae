"""Every model call goes through the allocator: lease before, settle after (R5.3–R5.5)."""

from __future__ import annotations

import itertools

import anyio

from agents.builtin import QuestionAnswerAgent, StepsAgent
from scheduler import Limits, TaskSpec
from scheduler.config import AllocatorConfig, PoolConfig
from scheduler.core import UsageEvent
from scheduler.store import MemoryStore
from scheduler.store._ledger import Hold, ScopeLimit
from scheduler.testing import ScriptedProvider
from tests._helpers import OrchestratorFactory


async def test_r5_3_gateway_calls_are_leased_from_the_pool(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.3: the pool's concurrency caps calls in flight; every lease is settled."""
    pool = PoolConfig(tokens_per_minute=None, requests_per_minute=None, concurrent=5)
    provider = ScriptedProvider(latency_s=1.0)
    orch = make_orchestrator({"qa": QuestionAnswerAgent, "coder": StepsAgent},
                             provider=provider,
                             allocator=AllocatorConfig(pools={"anthropic": pool}))
    specs = [TaskSpec(id=f"q{i}", agent="qa", prompt="What is this?",
                      priority="background" if i % 2 else "critical_path")
             for i in range(20)]
    report = await orch.run(specs)
    assert all(o.status == "completed" for o in report.outcomes.values())
    assert provider.max_in_flight == 5
    stats = orch.allocator.statistics()
    assert stats.pools["anthropic"].grants == 20
    assert stats.leases == 0 and stats.waiters == () and stats.holders == 0


async def test_r5_4_tokens_per_minute_bound_spreads_calls(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R5.4: leased tokens come out of the per-minute bucket; unused ones come back."""
    pool = PoolConfig(tokens_per_minute=3000, requests_per_minute=None, concurrent=None)
    orch = make_orchestrator({"qa": QuestionAnswerAgent},
                             provider=ScriptedProvider(latency_s=0.1),
                             allocator=AllocatorConfig(pools={"anthropic": pool}))
    report = await orch.run(
        [TaskSpec(id=f"q{i}", agent="qa", prompt="What?") for i in range(6)])
    assert all(o.status == "completed" for o in report.outcomes.values())
    stats = orch.allocator.statistics().pools["anthropic"]
    assert stats.grants == 6 and stats.leases == 0
    # Each call leased ~1 500 tokens (the max share) but used 150: the rest came back.
    assert stats.tokens_available is not None and stats.tokens_available >= 3000 - 6 * 150


class _LedgerStore(MemoryStore):
    """A MemoryStore that is also a BudgetLedger: holds always granted, renewals counted."""

    def __init__(self) -> None:
        super().__init__()
        self.renewed: list[tuple[float, str]] = []
        #: Each hold's life: (time taken, time settled).
        self.life: dict[str, list[float]] = {}

    async def try_reserve(self, hold_id: str, limits: tuple[ScopeLimit, ...], *, model: str,
                          tokens: int, cost_usd: float) -> Hold:
        scopes = tuple(lim.scope for lim in limits)
        self.life[hold_id] = [anyio.current_time()]
        return Hold(hold_id, scopes, model, tokens, cost_usd, {}, {})

    async def settle(self, event: UsageEvent, hold: Hold) -> bool:
        self.life[hold.hold_id].append(anyio.current_time())
        return await self.record(event)

    async def release(self, hold: Hold) -> None:
        return None

    async def renew(self, hold: Hold) -> bool:
        self.renewed.append((anyio.current_time(), hold.hold_id))
        return True


async def test_r1_2_budget_hold_is_kept_alive_while_its_call_waits_and_runs(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """R1.2 across processes, R5.4: a call that holds shared budget (Redis) renews its hold
    at least every hold_ttl_s / 3 from the moment it takes it until the call settles --
    while its 100 s call runs (a long streamed answer) -- so the hold never lapses while
    other replicas could spend it.  The hold is taken once the call has the single
    provider slot: the second call holds nothing while it queues for it."""
    store = _LedgerStore()
    orch = make_orchestrator(
        {"qa": QuestionAnswerAgent}, provider=ScriptedProvider(latency_s=100.0), store=store,
        distributed={"hold_ttl_s": 30.0},
        allocator=AllocatorConfig(pools={"anthropic": PoolConfig(concurrent=1)}),
    )
    # 200 s in all for the second task: above a question's 2 min time budget, which is a
    # deadline on the attempt (R1.1)
    specs = [TaskSpec(id=f"q{i}", agent="qa", prompt="What is this?",
                      budget=Limits(time_s=600)) for i in range(2)]
    report = await orch.run(specs)
    assert {o.status for o in report.outcomes.values()} == {"completed"}
    assert len(store.life) == 2 and all(len(life) == 2 for life in store.life.values())
    for hold, (taken, settled) in store.life.items():
        times = [taken, *(t for t, h in store.renewed if h == hold), settled]
        assert times == sorted(times)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) <= 10.0 + 1e-6, (hold, times)  # a third of the hold's TTL
    spans = sorted(settled - taken for taken, settled in store.life.values())
    assert 100.0 <= spans[0] <= spans[1] < 101.0, spans  # not held while it queued
    assert max(taken for taken, _ in store.life.values()) >= 100.0  # its turn came then
    assert not orch.gateway.admission._holds  # an ended call's hold is renewed no more
