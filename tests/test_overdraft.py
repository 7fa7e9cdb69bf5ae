"""R3.5 overdraft grace, used only inside R3.6 critical sections."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import BudgetExceededError, Usage
from scheduler.budget import Reservation
from scheduler.core import OverdraftDeniedError
from scheduler.testing import run_virtual
from tests._alerts_helpers import Harness, make_config, open_harness, profile, sqlite_store


async def _llm(h: Harness, task: str, tokens: int, cost: float = 0.0,
               model: str = "sonnet") -> Reservation:
    """Reserve and charge one model call like the gateway (overdraft inside critical)."""
    res = await h.controller.reserve(task, model=model, tokens=tokens, cost_usd=cost)
    event = h.tracker.make_event(task, model=model, usage=Usage(prompt_tokens=tokens),
                                 cost_usd=cost)
    await h.alerts.apply(task, await h.tracker.charge(event, res))
    return res


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=repo, check=True, capture_output=True)


async def test_r3_5_file_write_and_git_commit_in_flight_complete_then_second_overdraft_refused(
    tmp_path: Path,
) -> None:
    """R3.5/R3.6: both operations finish within the grace; a second overdraft is denied."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")

    h = await open_harness(tasks={"w": profile(tokens=10_000), "g": profile(tokens=10_000)})
    await h.charge("w", tokens=9_000)
    await h.charge("g", tokens=9_500)
    denied: list[str] = []
    async with h.controller.open_critical("w", "file_write"):
        await _llm(h, "w", 3_000)  # 2,000 over the limit: within the grace
        await anyio.Path(repo / "a.txt").write_text("content\n")
        with pytest.raises(OverdraftDeniedError) as info:
            await _llm(h, "w", 100)  # a second overdraft
        denied.append(info.value.reason)
    async with h.controller.open_critical("g", "git_commit"):
        await _llm(h, "g", 4_000)  # 3,500 over: within the grace
        await anyio.run_process(["git", "add", "a.txt"], cwd=repo)
        await anyio.run_process(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
             "-m", "in flight at the limit"], cwd=repo,
        )
        with pytest.raises(OverdraftDeniedError) as info:
            await _llm(h, "g", 100)
        denied.append(info.value.reason)
    # an operation opened while the pause is pending was not in progress: no grace
    async with h.controller.open_critical("w", "file_write"):
        with pytest.raises(BudgetExceededError):
            await _llm(h, "w", 1)
    out: dict[str, Any] = {
        "granted": [(e.task_id, e.data["tokens"], e.data["operation"])
                    for e in h.named("overdraft_granted")],
        "denied": denied, "records": await h.store.list_state("overdraft"),
        "paused": (h.controller.is_paused("w"), h.controller.is_paused("g")),
        "in_critical": h.controller.statistics().in_critical,
        "used": (h.tracker.task_scope("w").totals.tokens,
                 h.tracker.task_scope("g").totals.tokens),
    }
    assert out["granted"] == [("w", 2_000, "file_write"), ("g", 3_500, "git_commit")]
    assert all("already used" in r for r in out["denied"])
    assert (repo / "a.txt").read_text() == "content\n"
    log = (await anyio.run_process(["git", "log", "--format=%s"], cwd=repo)).stdout.decode()
    assert log.strip() == "in flight at the limit"
    assert len(out["records"]) == 2
    # both pauses take effect after the operations
    assert out["paused"] == (True, True) and out["in_critical"] == {}
    assert out["used"] == (12_000, 13_500)  # at most limit + one grace each


async def test_r3_5_no_overdraft_outside_a_critical_section() -> None:
    h = await open_harness(tasks={"t": profile(tokens=1000)})
    await h.charge("t", tokens=900)
    with pytest.raises(BudgetExceededError):
        await h.controller.reserve("t", model="sonnet", tokens=200, cost_usd=0.0)
    assert h.ledger.statistics().granted == 0


async def test_r3_5_overshoot_larger_than_the_grace_is_denied() -> None:
    h = await open_harness(tasks={"t": profile(tokens=1000)})
    async with h.controller.open_critical("t", "external_api"):
        with pytest.raises(OverdraftDeniedError) as info:
            await _llm(h, "t", 6_001)  # 5,001 over
    reason, held = info.value.reason, h.tracker.task_scope("t").reserved_tokens
    assert "exceeds the grace of 5000" in reason
    assert held == 0  # nothing reserved when denied


async def test_r3_5_cost_grace_is_ten_cents() -> None:
    out: list[str] = []
    for over in (0.05, 0.15):
        h = await open_harness(tasks={"t": profile(cost_usd=1.0)})
        await h.charge("t", cost=0.95)
        async with h.controller.open_critical("t", "external_api"):
            try:
                await _llm(h, "t", 10, cost=0.05 + over)
                out.append("granted")
            except OverdraftDeniedError as exc:
                out.append(exc.reason)
    granted, denied = out
    assert granted == "granted"
    assert "exceeds the grace of $0.10" in denied


async def test_r3_5_no_grace_for_time() -> None:
    async def main() -> str:
        h = await open_harness(tasks={"t": profile(time_s=10.0)})
        await anyio.sleep(11)
        async with h.controller.open_critical("t", "file_write"):
            with pytest.raises(OverdraftDeniedError) as info:
                await _llm(h, "t", 10)
        return info.value.reason

    assert "no overdraft grace for time_s" in await main()


async def test_r3_5_overdraft_repaid_from_the_next_budget_added() -> None:
    h = await open_harness(tasks={"t": profile(tokens=10_000)})
    await h.charge("t", tokens=9_000)
    async with h.controller.open_critical("t", "file_write"):
        await _llm(h, "t", 3_000)  # 2,000 overdraft
    await h.controller.decide("t", "add_budget", tokens=50_000)
    await h.controller.wait_decision("t")
    (record,) = (await h.store.list_state("overdraft")).values()
    left = h.tracker.remaining("t").tokens
    async with h.controller.open_critical("t", "file_write"):
        await _llm(h, "t", 48_000 + 1_000)  # a new period: the grace is available again
    out: dict[str, Any] = {"record": record, "left": left,
                           "granted": h.ledger.statistics().granted}
    assert out["record"]["repaid_tokens"] == 2_000
    assert out["left"] == 48_000  # 50,000 added minus the 2,000 repaid
    assert out["granted"] == 2


async def test_r3_5_unpaid_overdraft_blocks_the_next_one() -> None:
    h = await open_harness(tasks={"t": profile(tokens=10_000)})
    await h.charge("t", tokens=9_999)
    async with h.controller.open_critical("t", "file_write"):
        await _llm(h, "t", 3_000)  # 2,999 overdraft
    out: list[str] = []
    await h.controller.decide("t", "add_budget", tokens=1_000)  # repays 1,000 of 2,999
    await h.controller.wait_decision("t")
    async with h.controller.open_critical("t", "file_write"):
        with pytest.raises(OverdraftDeniedError) as info:
            await _llm(h, "t", 100)
        out.append(info.value.reason)
    await h.controller.request_pause("t", "more budget")
    await h.controller.decide("t", "add_budget", tokens=10_000)  # repays the rest
    await h.controller.wait_decision("t")
    async with h.controller.open_critical("t", "file_write"):
        await _llm(h, "t", 9_000)  # 999 over the 21,000 limit: allowed again
    out.append(f"granted {h.ledger.statistics().granted}")
    assert out == ["a previous overdraft on task:t is unpaid", "granted 2"]


def test_r3_5_used_grace_survives_a_restart(tmp_path: Path) -> None:
    async def first() -> None:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)})
        await h.charge("t", tokens=999)
        async with h.controller.open_critical("t", "file_write"):
            await _llm(h, "t", 500)
        await h.controller.discard("t")  # the task ended without the pause taking effect
        await h.store.aclose()

    async def second() -> str:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)})
        try:
            async with h.controller.open_critical("t", "file_write"):
                with pytest.raises(OverdraftDeniedError) as info:
                    await _llm(h, "t", 10)
            return info.value.reason
        finally:
            await h.store.aclose()

    run_virtual(first)
    assert "already used" in run_virtual(second)


def test_r3_5_a_new_session_does_not_inherit_a_tasks_used_grace(tmp_path: Path) -> None:
    """Issue #18: a task's grace is per session, like its budget; the day's is shared."""

    async def use_grace(session: str) -> int:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)},
                               session_id=session)
        try:
            await h.charge("t", tokens=999)
            async with h.controller.open_critical("t", "file_write"):
                await _llm(h, "t", 500)
            await h.controller.discard("t")
            return h.ledger.statistics().granted
        finally:
            await h.store.aclose()

    assert run_virtual(use_grace, "s1") == 1
    assert run_virtual(use_grace, "s2") == 1  # a later session's own grace


# -- property: a shared session budget is never overspent by more than one grace ----------

op = st.tuples(st.integers(50, 6_000), st.floats(0.3, 1.0), st.booleans(),
               st.floats(0.0, 3.0))
agent_ops = st.lists(op, min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=st.lists(agent_ops, min_size=2, max_size=10),
       limit=st.integers(2_000, 40_000))
def test_r3_5_many_agents_never_exceed_shared_budget_plus_one_grace(
    workload: list[list[tuple[int, float, bool, float]]], limit: int,
) -> None:
    """R3.5: concurrent agents on one session budget spend at most budget + one grace."""

    async def main() -> tuple[int, int]:
        cfg = make_config(session={"tokens": limit})
        tasks = {f"a{i}": profile() for i in range(len(workload))}
        h = await open_harness(cfg, tasks=tasks)

        async def agent(task: str, ops: list[tuple[int, float, bool, float]]) -> None:
            for estimate, ratio, critical, delay in ops:
                await anyio.sleep(delay)
                try:
                    if critical:
                        async with h.controller.open_critical(task, "file_write"):
                            await _settle(h, task, estimate, ratio, delay)
                    else:
                        await _settle(h, task, estimate, ratio, delay)
                except (BudgetExceededError, OverdraftDeniedError):
                    return  # the task pauses; nobody decides in this run

        async with anyio.create_task_group() as tg:
            for i, ops in enumerate(workload):
                tg.start_soon(agent, f"a{i}", ops)
        return h.tracker.session.totals.tokens, len(h.named("budget_exceeded"))

    spent, exceeded_events = run_virtual(main)
    assert spent <= limit + 5_000
    assert exceeded_events <= 1


async def _settle(h: Harness, task: str, estimate: int, ratio: float, delay: float) -> None:
    res = await h.controller.reserve(task, model="sonnet", tokens=estimate, cost_usd=0.0)
    try:
        await anyio.sleep(delay)  # the call is in flight while others reserve
        actual = max(1, int(estimate * ratio))
        event = h.tracker.make_event(task, model="sonnet", usage=Usage(prompt_tokens=actual))
        await h.alerts.apply(task, await h.tracker.charge(event, res))
    finally:
        h.tracker.cancel(res)
