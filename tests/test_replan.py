"""Replanning when the preferred model is unavailable or the budget is short (SPEC R6.2, R6.7)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from policies.replan import (
    BreakDown,
    DefaultReplanPolicy,
    Defer,
    Proceed,
    ReplanInput,
    ReplanParams,
    Simplify,
)
from scheduler import TaskSpec, VibeConfig
from scheduler.budget import resolve_task
from scheduler.routing import Replanner
from scheduler.tasks import TaskHandle
from tests._routing_helpers import COMPLEX, MODERATE, Recorder, info, knock_out, make_router

TIERS = ("haiku", "sonnet", "opus")
ALL = frozenset(TIERS)


def data(wanted: str = "opus", usable: frozenset[str] = ALL, fraction: float = 0.0,
         **kw: Any) -> ReplanInput:
    task = kw.pop("task", info(task_type="architecture_design", **COMPLEX))
    return ReplanInput(task=task, wanted=wanted, tiers=TIERS, usable=usable,
                       budget_fraction=fraction, **kw)


# -- the policy (pure) -----------------------------------------------------------------


def test_r6_7_proceed_when_the_wanted_model_is_usable() -> None:
    """R6.7: nothing to replan while the wanted model is usable."""
    d = DefaultReplanPolicy().plan(data())
    assert isinstance(d, Proceed) and d.model == "opus"


def test_r6_7_simplify_when_budget_critical() -> None:
    """R6.7 simplify: budget critical (≥ 90 %) → do only the key part."""
    d = DefaultReplanPolicy().plan(data(fraction=0.9))
    assert isinstance(d, Simplify) and "only the key part" in d.instruction
    assert isinstance(DefaultReplanPolicy().plan(data(fraction=0.89)), Proceed)
    # at 100 % the task pauses for a person's decision (R3.4) instead of simplifying itself
    assert isinstance(DefaultReplanPolicy().plan(data(fraction=1.4)), Proceed)


def test_r6_7_defer_complex_task_while_opus_is_down() -> None:
    """R6.7 defer: opus temporarily unavailable → a complex, non-urgent task is queued."""
    d = DefaultReplanPolicy().plan(data(usable=frozenset({"haiku", "sonnet"})))
    assert isinstance(d, Defer) and d.until_model == "opus" and d.max_wait_s == 600


def test_r6_7_urgent_or_long_deferred_tasks_move_to_the_fallback() -> None:
    """R6.7: a user-waiting task, or one deferred too long, continues on sonnet instead."""
    urgent = info(task_type="architecture_design", priority=3, **COMPLEX)
    usable = frozenset({"haiku", "sonnet"})
    d = DefaultReplanPolicy().plan(data(usable=usable, task=urgent))
    assert isinstance(d, Proceed) and d.model == "sonnet"
    d = DefaultReplanPolicy().plan(data(usable=usable, deferred_s=600))
    assert isinstance(d, Proceed) and d.model == "sonnet"
    moderate = info(task_type="bug_fix", **MODERATE)  # not complex: no deferral
    d = DefaultReplanPolicy().plan(data(usable=usable, task=moderate))
    assert isinstance(d, Proceed) and d.model == "sonnet"


def test_r6_7_break_down_when_only_haiku_is_left() -> None:
    """R6.7 break down: a task wanting more than haiku with only haiku usable is split."""
    policy = DefaultReplanPolicy(ReplanParams(max_defer_s=0))
    d = policy.plan(data(usable=frozenset({"haiku"}), parts=("a.py", "b.py")))
    assert isinstance(d, BreakDown)
    assert d.model == "haiku" and d.parts == ("a.py", "b.py") and d.add_verification
    assert not d.use_agent_hook and d.max_output_tokens == 4_000
    hooked = policy.plan(data(usable=frozenset({"haiku"}), has_decompose=True))
    assert isinstance(hooked, BreakDown) and hooked.use_agent_hook and hooked.parts == ()
    generic = policy.plan(data(wanted="sonnet", usable=frozenset({"haiku"}),
                               task=info(task_type="bug_fix", **MODERATE)))
    assert isinstance(generic, BreakDown) and len(generic.parts) == 3


# -- applying decisions ----------------------------------------------------------------


class SplittingAgent:
    """An agent with its own decompose hook (R6.2)."""

    async def run(self, ctx: Any) -> None:
        return None

    def decompose(self, task: TaskSpec) -> list[TaskSpec]:
        return [task.model_copy(update={"id": f"{task.id}-{n}", "prompt": f"{n}"})
                for n in ("models", "views")]


def handle(**kw: Any) -> TaskHandle:
    spec = TaskSpec(id="auth", agent="refactor", prompt="refactor the whole auth module", **kw)
    return TaskHandle(spec, resolve_task(spec, VibeConfig()))


def replanner() -> tuple[Replanner, Recorder]:
    router, rec = make_router()
    return Replanner(VibeConfig(), router, bus=router.bus), rec


def test_r6_2_break_down_one_task_per_file_plus_verification() -> None:
    """R6.2: "refactor the whole auth module" → one task per file, then a verification step."""
    rp, rec = replanner()
    h = handle(params={"parts": ["auth/login.py", "auth/token.py"]})
    knock_out(rp.router.health, "sonnet")
    knock_out(rp.router.health, "opus")
    d = rp.plan(h, budget_fraction=0.1)
    assert isinstance(d, BreakDown), d
    specs = rp.break_down(h.spec, d)
    assert [s.id for s in specs] == ["auth.part1", "auth.part2", "auth.verify"]
    assert "auth/login.py" in specs[0].prompt and specs[0].params["max_output_tokens"] == 4_000
    assert specs[2].depends_on == ("auth.part1", "auth.part2")
    assert rec.named("task_broken_down")[0].data["parts"] == [s.id for s in specs]


def test_r6_2_break_down_through_the_agents_own_hook() -> None:
    """R6.2: an agent's decompose hook decides the parts; verification is still added."""
    rp, _ = replanner()
    h = handle()
    knock_out(rp.router.health, "sonnet")
    knock_out(rp.router.health, "opus")
    agent = SplittingAgent()
    d = rp.plan(h, budget_fraction=0.0, agent=agent)
    assert isinstance(d, BreakDown) and d.use_agent_hook
    assert [s.id for s in rp.break_down(h.spec, d, agent)] == [
        "auth-models", "auth-views", "auth.verify"]


def test_r6_7_simplify_tells_the_agent_once() -> None:
    """R6.7 simplify: the agent sees signals.simplify; the notice is emitted once."""
    rp, rec = replanner()
    h = handle()
    d = rp.plan(h, budget_fraction=0.95)
    assert isinstance(d, Simplify)
    rp.simplify(h, d)
    rp.simplify(h, d)
    assert "key part" in h.signals.simplify
    assert len(rec.named("task_simplified")) == 1


async def _pong(model: str) -> str:
    await anyio.sleep(0.1)
    return "pong"


@pytest.mark.anyio
async def test_r6_7_defer_waits_until_opus_recovers_and_notifies() -> None:
    """R6.7 defer: queued while opus is down, resumed once it serves the task's priority."""
    router, rec = make_router(clock=anyio.current_time, ping=_pong)
    rp = Replanner(VibeConfig(), router, bus=router.bus)
    h = handle(task_type="architecture_design", complexity="complex")
    knock_out(router.health, "opus")
    d = rp.plan(h, budget_fraction=0.0)
    assert isinstance(d, Defer)
    resumed: list[bool] = []

    async def deferred() -> None:
        resumed.append(await rp.wait_deferred(h, d))

    async with anyio.create_task_group() as tg:
        tg.start_soon(deferred)
        await anyio.sleep(30)
        assert h.status == "deferred" and resumed == []
        router.health.mark_unavailable("opus", "test")  # no duplicate notice
        await anyio.sleep(61)
        assert await router.health.check_once() == {"opus": True}
        await anyio.sleep(1)
        assert resumed == []  # recovering serves background tasks only; this one is normal
        for _ in range(3):
            router.health.record_call("opus", True, 0.2)
    assert resumed == [True] and h.status == "pending"  # the status from before
    assert rec.names().count("task_deferred") == 1
    assert rec.names().count("model_unavailable") == 1
    assert rec.names()[-1] == "task_resumed"


@pytest.mark.anyio
async def test_r6_7_defer_gives_up_after_max_wait() -> None:
    """R6.7 defer: a deferral is bounded; after ``max_wait_s`` the caller moves on."""
    rp, _ = replanner()
    h = handle()
    knock_out(rp.router.health, "opus")
    t0 = anyio.current_time()
    ok = await rp.wait_deferred(h, Defer("opus", 600.0, "test"))
    assert not ok and anyio.current_time() - t0 == pytest.approx(600.0)
