"""R3.4 pause and decide, R3.6 critical sections: in one process, virtual time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler.control import Decision, PauseController
from scheduler.control._decision import submit_to_store
from scheduler.core import DecisionError
from scheduler.store import MemoryStore
from scheduler.testing import run_virtual
from tests._alerts_helpers import Harness, open_harness, profile, sqlite_store


async def _exceed(h: Harness, task: str = "t", tokens: int = 1000) -> None:
    await h.charge(task, tokens=tokens)
    assert h.controller.is_paused(task)


async def test_r3_4_pause_add_budget_continue_with_added_budget() -> None:
    """R3.4: exceeded → paused (leases released) → +50,000 tokens → continues."""

    h = await open_harness(tasks={"t": profile(tokens=1000)})
    await _exceed(h)
    log: list[str] = []

    async def release() -> None:
        log.append("released")

    async def person() -> None:
        await anyio.sleep(30)
        assert h.controller.statistics().paused == ("t",)
        log.append("decide")
        await h.controller.decide("t", "add_budget", tokens=50_000)

    async with anyio.create_task_group() as tg:
        tg.start_soon(person)
        decision = await h.controller.wait_if_paused("t", release=release)
    assert decision is not None and decision.action == "add_budget"
    log.append("resumed")
    h.tracker.reserve("t", model="sonnet", tokens=40_000, cost_usd=0.0)
    (paused,) = h.named("task_paused")
    out: dict[str, Any] = {
        "log": log, "limit": h.tracker.task_scope("t").limits.tokens,
        "choices": paused.data["choices"], "paused": h.controller.is_paused("t"),
        "budget": await h.store.get_state("budget", "s1/t"),
    }
    assert out["log"] == ["released", "decide", "resumed"]
    assert out["limit"] == 51_000
    assert out["choices"] == ["add_budget", "finish", "review"]
    assert out["paused"] is False
    assert out["budget"] == {"scopes": {"task:t": {"tokens": 50_000}}}


async def test_r3_4_thresholds_rearmed_after_budget_added_fire_once_again() -> None:
    async def main() -> list[str]:
        h = await open_harness(tasks={"t": profile(tokens=1000)})
        await _exceed(h)
        await h.controller.decide("t", "add_budget", tokens=1000)
        await h.controller.wait_decision("t")
        for _ in range(12):
            await h.charge("t", tokens=100)
        return h.names("budget_")

    assert await main() == [
        "budget_warning", "budget_critical", "budget_exceeded",
        "budget_warning", "budget_critical", "budget_exceeded",
    ]


def test_r3_4_add_cost_budget_to_a_cost_pause() -> None:
    async def main() -> tuple[float | None, int | None]:
        h = await open_harness(tasks={"t": profile(cost_usd=1.0, tokens=10_000)})
        await h.charge("t", cost=1.0)
        await h.controller.decide("t", "add", cost_usd=0.5)  # alias is CLI-only
        return None, None

    with pytest.raises(DecisionError, match="unknown decision"):
        run_virtual(main)

    async def main2() -> tuple[float | None, int | None]:
        h = await open_harness(tasks={"t": profile(cost_usd=1.0, tokens=10_000)})
        await h.charge("t", cost=1.0)
        await h.controller.decide("t", "add_budget", cost_usd=0.5)
        await h.controller.wait_decision("t")
        lim = h.tracker.task_scope("t").limits
        return lim.cost_usd, lim.tokens

    assert run_virtual(main2) == (1.5, 10_000)


async def test_r3_4_add_budget_never_caps_an_unlimited_dimension() -> None:
    async def main() -> tuple[int | None, float | None]:
        h = await open_harness(tasks={"t": profile(tokens=1000)})
        await _exceed(h)
        await h.controller.decide("t", "add_budget", tokens=500, cost_usd=0.5)
        await h.controller.wait_decision("t")
        lim = h.tracker.task_scope("t").limits
        return lim.tokens, lim.cost_usd

    assert await main() == (1500, None)


async def test_r3_4_finish_returns_finish_and_clears_the_pause() -> None:
    async def main() -> tuple[str, bool, Any]:
        h = await open_harness(tasks={"t": profile(tokens=1000)})
        await _exceed(h)

        async def person() -> None:
            await anyio.sleep(5)
            await h.controller.decide("t", "finish")

        async with anyio.create_task_group() as tg:
            tg.start_soon(person)
            decision = await h.controller.wait_decision("t")
        pause = await h.store.get_state("pause", "s1/t")  # session s1, task t
        return decision.action, h.controller.is_paused("t"), pause

    assert await main() == ("finish", False, None)


async def test_r3_4_review_shows_work_and_keeps_the_task_paused() -> None:
    h = await open_harness(tasks={"t": profile(tokens=1000)})
    await h.store.put_state("checkpoint", "s1/t", {"step": 3})  # session s1, task t
    await h.charge("t", tokens=400, file_edits=2)
    await _exceed(h, tokens=600)
    order: list[str] = []
    reply: dict[str, Any] = {}

    async def person() -> None:
        await anyio.sleep(5)
        reply.update(await h.controller.decide("t", "review"))
        order.append("reviewed")
        await anyio.sleep(5)
        assert h.controller.is_paused("t")
        order.append("still paused")
        await h.controller.decide("t", "finish")

    async with anyio.create_task_group() as tg:
        tg.start_soon(person)
        await h.controller.wait_decision("t")
        order.append("decided")
    assert order == ["reviewed", "still paused", "decided"]
    summary = reply["summary"]
    assert summary["usage"]["tokens"] == 1000 and summary["usage"]["file_edits"] == 2
    assert summary["checkpoint"] == {"step": 3}
    assert summary["pause"]["dimension"] == "tokens"


async def test_r3_4_invalid_decisions_are_refused() -> None:
    h = await open_harness(tasks={"t": profile(tokens=1000), "u": profile()})
    await _exceed(h)
    with pytest.raises(DecisionError, match=r"'u' is not paused$"):  # a task of the run
        await h.controller.decide("u", "finish")
    with pytest.raises(DecisionError, match="not paused: this run has no task of that name"):
        await h.controller.decide("uu", "finish")  # a mistyped id says so
    with pytest.raises(DecisionError, match="positive amount"):
        await h.controller.decide("t", "add_budget")
    with pytest.raises(DecisionError, match="positive amount"):
        await h.controller.decide("t", "add_budget", tokens=-5)
    with pytest.raises(DecisionError, match="unknown decision"):
        await h.controller.decide("t", "explode")


def test_r3_4_pause_and_decision_survive_a_restart(tmp_path: Path) -> None:
    """R3.4: a paused task is still paused after a restart; the decision is applied then."""

    async def first() -> None:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)})
        await _exceed(h)
        with anyio.move_on_after(60):  # the orchestrator dies while the task waits
            await h.controller.wait_decision("t")
        await h.store.aclose()

    async def second() -> tuple[list[str], int | None]:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)})
        paused: list[str] = [p.state for p in h.controller.paused_tasks()]

        async def person() -> None:
            await anyio.sleep(1)
            await h.controller.decide("t", "add_budget", tokens=50_000)

        async with anyio.create_task_group() as tg:
            tg.start_soon(person)
            await h.controller.wait_decision("t")
        await h.store.aclose()
        return paused, h.tracker.task_scope("t").limits.tokens

    async def third() -> int | None:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)})
        await h.store.aclose()
        return h.tracker.task_scope("t").limits.tokens

    run_virtual(first)
    assert run_virtual(second) == (["paused"], 51_000)
    assert run_virtual(third) == 51_000  # the budget added is re-applied after a restart


def test_r3_4_decision_written_while_no_orchestrator_runs_is_applied_at_start(
    tmp_path: Path,
) -> None:
    async def first() -> None:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)})
        await _exceed(h)
        await h.store.aclose()

    async def offline() -> dict[str, Any]:
        store = sqlite_store(tmp_path)
        await store.open()
        try:
            return await submit_to_store(store, Decision("t", "add_budget", tokens=2000,
                                                         source="cli"))
        finally:
            await store.aclose()

    async def restart() -> tuple[str, int | None]:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)})
        with anyio.fail_after(1):
            decision = await h.controller.wait_decision("t")
        await h.store.aclose()
        return decision.action, h.tracker.task_scope("t").limits.tokens

    run_virtual(first)
    assert run_virtual(offline) == {"accepted": True, "action": "add_budget", "stored": True,
                                    "session": "s1"}
    assert run_virtual(restart) == ("add_budget", 3000)


async def test_r3_4_running_controller_picks_up_a_decision_written_to_the_store() -> None:
    async def main() -> str:
        h = await open_harness(tasks={"t": profile(tokens=1000)}, poll_s=2.0)
        await _exceed(h)

        async def other_process() -> None:
            await anyio.sleep(7)
            await submit_to_store(h.store, Decision("t", "finish", source="cli"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(other_process)
            with anyio.fail_after(10):
                decision = await h.controller.wait_decision("t")
        return decision.source

    assert await main() == "cli"


async def test_r3_6_pause_takes_effect_only_after_the_critical_section() -> None:
    """R3.6: a pause arriving during a file write waits until the write completes."""

    h = await open_harness(tasks={"t": profile(tokens=1000)})
    order: list[str] = []

    async def writer() -> None:
        async with h.controller.open_critical("t", "file_write"):
            order.append("write started")
            await h.charge("t", tokens=1000)  # the limit is hit mid-operation
            assert h.controller.is_paused("t") and "t" in h.controller.statistics().in_critical
            assert await h.controller.wait_if_paused("t") is None  # not inside its own op
            await anyio.sleep(10)
            order.append("write done")
        assert h.controller.is_paused("t") and not h.controller.statistics().in_critical

    async def sibling() -> None:
        await anyio.sleep(1)
        order.append("sibling waits")
        decision = await h.controller.wait_if_paused("t")
        assert decision is not None
        order.append("sibling resumed")

    async def person() -> None:
        await anyio.sleep(2)
        await h.controller.decide("t", "finish")

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        tg.start_soon(sibling)
        tg.start_soon(person)
    (paused,) = h.named("task_paused")
    order.append(f"paused event after write: {paused.at >= 10}")
    assert order == [
        "write started", "sibling waits", "write done", "sibling resumed",
        "paused event after write: True",
    ]


async def test_r3_4_every_waiter_of_one_pause_gets_the_decision() -> None:
    h = await open_harness(tasks={"t": profile(tokens=1000)})
    await _exceed(h)
    got: list[str] = []

    async def waiter() -> None:
        got.append((await h.controller.wait_decision("t")).action)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(waiter)
        await anyio.sleep(5)
        await h.controller.decide("t", "add_budget", tokens=100)
    assert h.controller.statistics().decisions_applied == 1
    assert h.tracker.task_scope("t").limits.tokens == 1100  # applied once, not thrice
    assert got == ["add_budget"] * 3


async def test_r3_4_decision_timeout_saves_and_finishes() -> None:
    async def main() -> tuple[str, str, float]:
        h = await open_harness(tasks={"t": profile(tokens=1000)})
        h.controller.decision_timeout_s = 120
        await _exceed(h)
        start = anyio.current_time()
        decision = await h.controller.wait_decision("t")
        return decision.action, decision.source, anyio.current_time() - start

    assert await main() == ("finish", "timeout", 120)


async def test_r3_6_critical_sections_nest_and_are_reported() -> None:
    h = await open_harness(tasks={"t": profile()})
    seen: list[Any] = ["t" in h.controller.statistics().in_critical]
    async with h.controller.open_critical("t", "git_commit"):
        async with h.controller.open_critical("t", "external_api"):
            seen.append(h.controller.current_critical("t"))
            seen.append(h.controller.statistics().in_critical)
        seen.append(h.controller.current_critical("t"))
    seen.append("t" in h.controller.statistics().in_critical)
    seen.append(h.controller.current_critical("t"))
    assert seen == [False, "external_api", {"t": 2}, "git_commit", False, None]


async def test_r3_6_critical_section_closes_on_error_and_cancellation() -> None:
    async def main() -> bool:
        h = await open_harness(tasks={"t": profile()})
        with pytest.raises(RuntimeError):
            async with h.controller.open_critical("t", "file_write"):
                raise RuntimeError("disk full")
        with anyio.move_on_after(1):
            async with h.controller.open_critical("t", "external_api"):
                await anyio.sleep(5)
        return "t" in h.controller.statistics().in_critical

    assert await main() is False


async def test_r3_4_controller_without_store_records_is_empty() -> None:
    async def main() -> int:
        h = await open_harness()
        c2 = PauseController(h.store, h.tracker, h.events)
        await c2.open()
        return len(c2.paused_tasks())

    assert await main() == 0


class _SlowDecisionWrites(MemoryStore):
    """A store whose write of a decision is visible at once but returns only after
    ``delay_s`` (a group commit under load): a waiter's poll can read it first."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def put_state(self, kind: str, key: str, value: dict[str, Any]) -> None:
        await super().put_state(kind, key, value)
        if kind == "decision":
            await anyio.sleep(self.delay_s)


async def test_r3_4_a_decision_a_waiter_applied_from_the_store_is_accepted() -> None:
    """R3.4: ``decide`` stores its decision; the waiting task's store poll reads and applies
    it before that write returns.  The decision is accepted (not refused as already
    applied) and applied once, with its budget added."""
    store = _SlowDecisionWrites(delay_s=5.0)
    h = await open_harness(store=store, tasks={"t": profile(tokens=1000)}, poll_s=1.0)
    await _exceed(h)
    answers: list[dict[str, Any]] = []

    async def person() -> None:
        await anyio.sleep(0.5)
        answers.append(await h.controller.decide("t", "add_budget", tokens=3000, source="cli"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(person)
        with anyio.fail_after(30):
            decision = await h.controller.wait_decision("t")
    assert decision.action == "add_budget" and decision.source == "cli"
    assert answers == [{"accepted": True, "action": "add_budget"}]
    assert h.controller.statistics().decisions_applied == 1
    assert not h.controller.is_paused("t")
    assert await store.get_state("decision", h.controller._key("t")) is None


class _SlowFirstDecisionRead(MemoryStore):
    """A store whose first read of a decision returns ``delay_s`` late with what is stored
    by then (a poll caught behind a busy store): it sees a decision written meanwhile."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None:
        if kind == "decision" and self.delay_s:
            delay, self.delay_s = self.delay_s, 0.0
            await anyio.sleep(delay)
        return await super().get_state(kind, key)


async def test_r3_4_budget_added_once_when_a_poll_and_decide_cross() -> None:
    """R3.4: a waiter's store poll started before ``decide`` and read its decision after
    it was handed over; the decision is applied once.  It used to stay queued and was
    applied again at the next pause, so ``decide KEY add --tokens 3000`` on a busy
    ``serve`` key raised its budget by 6,000 (3 replicas: 3,000 → 9,000)."""
    h = await open_harness(store=_SlowFirstDecisionRead(delay_s=5.0),
                           tasks={"t": profile(tokens=1000)}, poll_s=1.0)
    await _exceed(h)

    async def person() -> None:
        await anyio.sleep(0.5)
        await h.controller.decide("t", "add_budget", tokens=3000, source="cli")

    async with anyio.create_task_group() as tg:
        tg.start_soon(person)
        with anyio.fail_after(30):
            assert (await h.controller.wait_decision("t")).action == "add_budget"
    await _exceed(h, tokens=3000)  # the added budget used up: a new pause
    with anyio.move_on_after(60):
        await h.controller.wait_decision("t")  # waits for a person: nobody decides
    assert h.controller.statistics().decisions_applied == 1
    assert h.tracker.task_scope("t").limits.tokens == 4000
    assert h.controller.is_paused("t")


class _SlowDecisionDelete(MemoryStore):
    """A store whose deletion of a decision takes ``delay_s`` (a busy store)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def delete_state(self, kind: str, key: str) -> None:
        if kind == "decision":
            await anyio.sleep(self.delay_s)
        await super().delete_state(kind, key)


async def test_r3_4_a_pause_while_a_decision_is_applied_waits_for_its_own() -> None:
    """R3.4: the budget a decision added is used up before its record is deleted from the
    store; the new pause's store poll must not read that record as its own decision (the
    budget would be added twice from one ``decide``)."""
    h = await open_harness(store=_SlowDecisionDelete(delay_s=5.0),
                           tasks={"t": profile(tokens=1000)}, poll_s=1.0)
    await _exceed(h)

    async def spender() -> None:
        await anyio.sleep(1)  # the decision's record is being deleted
        await _exceed(h, tokens=200)
        with anyio.move_on_after(60):
            await h.controller.wait_decision("t")  # nobody decides this one

    async with anyio.create_task_group() as tg:
        tg.start_soon(h.controller.wait_decision, "t")
        await anyio.sleep(0.5)
        await h.controller.decide("t", "add_budget", tokens=100, source="cli")
        tg.start_soon(spender)
    assert h.tracker.task_scope("t").limits.tokens == 1100
    assert h.controller.statistics().decisions_applied == 1
    assert h.controller.is_paused("t")


class _SlowRepayment(MemoryStore):
    """A store whose reading of the overdraft period (budget added repays overdraft first)
    takes ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None:
        if kind == "overdraft_period":
            await anyio.sleep(self.delay_s)
        return await super().get_state(kind, key)


async def test_r3_4_a_check_while_budget_is_being_added_sees_it() -> None:
    """R3.4: once a decision ends the pause, the budget it adds is already there: a check
    made while the decision is still being stored passes instead of pausing the task anew
    (with nobody asked to decide)."""
    h = await open_harness(store=_SlowRepayment(delay_s=5.0),
                           tasks={"t": profile(tokens=1000)}, poll_s=1.0)
    await _exceed(h)
    seen: list[tuple[bool, int | None]] = []

    async def another_call() -> None:
        with anyio.fail_after(30):
            while h.controller.is_paused("t"):  # noqa: ASYNC110 - the end is not signalled
                await anyio.sleep(0.1)
        seen.append((h.controller.statistics().decisions_applied == 0,
                     h.tracker.task_scope("t").limits.tokens))
        h.tracker.check("t", tokens=100)  # raises BudgetExceededError at the old limit

    async with anyio.create_task_group() as tg:
        tg.start_soon(h.controller.wait_decision, "t")
        tg.start_soon(another_call)
        await anyio.sleep(0.5)
        await h.controller.decide("t", "add_budget", tokens=500, source="cli")
    assert seen == [(True, 1500)]  # while the decision was still being applied
