"""Deadlock detection and resolution end to end, on the real orchestrator (R5.6, R5.7).

Each scenario runs on trio's MockClock: the detector checks every 10 virtual
seconds.  Every test shows the victim the R5.7 order picks (lowest priority,
then least work done, then newest task), that the victim held nothing once it
yielded, that its task was requeued and later completed, and that no lock or
wait-for edge is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from policies.victim import VictimCandidate
from scheduler import TaskSpec
from scheduler.runtime import Orchestrator, RunReport
from scheduler.testing import run_virtual
from tests._deadlock_helpers import Observed, assert_clean, make_orch, run_scenario, spec


def _run(
    tmp_path: Path, specs: list[TaskSpec], **cfg: Any
) -> tuple[Orchestrator, RunReport, Observed]:
    orch = make_orch(tmp_path, **cfg)
    report, observed = run_virtual(run_scenario, orch, specs)
    return orch, report, observed


def _assert_yielded_and_completed(
    report: RunReport, observed: Observed, victims: list[str]
) -> None:
    assert sorted(observed.victims) == sorted(victims)
    for v in victims:
        assert observed.held_at_event[v] == [], f"{v} still held locks after yielding"
        assert report.outcomes[v].status == "completed", report.outcomes[v].reason
        assert report.outcomes[v].attempts == 2
    for ev in observed.events:
        assert ev.message == f"agent {ev.task_id} yielded due to deadlock"
    for tid, out in report.outcomes.items():
        assert out.status == "completed", (tid, out.reason)
        if tid not in victims:
            assert out.attempts == 1


def test_r5_6_two_cycle_lowest_priority_yields(tmp_path: Path) -> None:
    """R5.6/R5.7: a↔b over two files; b (background) is the victim."""
    orch, report, observed = _run(tmp_path, [
        spec("a", locks=["file:x", "file:y"]),
        spec("b", priority="background", locks=["file:y", "file:x"]),
    ])
    _assert_yielded_and_completed(report, observed, ["b"])
    assert observed.events[0].data["cycle"] in (["a", "b"], ["b", "a"])
    assert observed.events[0].at == 10.0  # found by the first periodic check
    assert_clean(orch)


class MostImportantYields:
    """A custom victim policy, the opposite of the default: the highest priority yields."""

    def choose(self, candidates: Sequence[VictimCandidate]) -> str:
        return max(candidates, key=lambda c: (c.priority, c.holder)).holder


def test_r5_7_the_victim_policy_named_in_config_chooses(tmp_path: Path) -> None:
    """R5.7: ``policies.victim`` is honoured: in a↔b the custom policy makes a (normal
    priority) yield where the default would take b (background)."""
    orch, report, observed = _run(
        tmp_path, [
            spec("a", locks=["file:x", "file:y"]),
            spec("b", priority="background", locks=["file:y", "file:x"]),
        ],
        policies={"victim": "tests.test_deadlock_scenarios:MostImportantYields"},
    )
    assert isinstance(orch.policies.victim, MostImportantYields)
    _assert_yielded_and_completed(report, observed, ["a"])
    assert_clean(orch)


def test_r5_6_three_cycle_newest_task_yields(tmp_path: Path) -> None:
    """R5.6/R5.7: a→b→c→a, equal priority and work; c started last, so c yields."""
    orch, report, observed = _run(tmp_path, [
        TaskSpec(id="z", agent="sleeper", params={"sleep_s": 0.5}),
        spec("a", locks=["r1", "r2"], hold_s=2.0),
        spec("b", locks=["r2", "r3"], hold_s=2.0),
        spec("c", depends_on=("z",), locks=["r3", "r1"], hold_s=1.0),
    ])
    _assert_yielded_and_completed(report, observed, ["c"])
    assert len(observed.events[0].data["cycle"]) == 3
    assert_clean(orch)


def test_r5_6_fifty_agent_ring_least_work_yields(tmp_path: Path) -> None:
    """R5.6/R5.7: a ring of 50 agents; all normal priority, a17 did the least work."""
    n = 50
    specs = [
        spec(f"a{i}", calls=0 if i == 17 else 2, locks=[f"r{i}", f"r{(i + 1) % n}"])
        for i in range(n)
    ]
    orch, report, observed = _run(tmp_path, specs)
    _assert_yielded_and_completed(report, observed, ["a17"])
    assert len(observed.events[0].data["cycle"]) == n
    assert_clean(orch)


def test_r5_7_least_work_done_goes_before_newest(tmp_path: Path) -> None:
    """R5.7: equal priority; ``old`` started first but did no work, ``new`` started later
    and made model calls: least work done decides before newest, so ``old`` yields."""
    orch, report, observed = _run(tmp_path, [
        TaskSpec(id="z", agent="sleeper", params={"sleep_s": 0.5}),
        spec("old", locks=["r1", "r2"], hold_s=3.0),
        spec("new", depends_on=("z",), calls=2, locks=["r2", "r1"], hold_s=1.0),
    ])
    _assert_yielded_and_completed(report, observed, ["old"])
    assert_clean(orch)


def test_r5_6_two_disjoint_cycles_in_one_check(tmp_path: Path) -> None:
    """R5.6/R5.7: a↔b and c↔d at once; both found by the same check, one victim each."""
    orch, report, observed = _run(tmp_path, [
        spec("a", locks=["p", "q"]),
        spec("b", priority="background", locks=["q", "p"]),
        spec("c", calls=1, locks=["s", "t"]),
        spec("d", calls=3, locks=["t", "s"]),
    ])
    _assert_yielded_and_completed(report, observed, ["b", "c"])
    assert {e.at for e in observed.events} == {10.0}
    assert_clean(orch)


def test_r5_6_overlapping_cycles_sharing_an_agent(tmp_path: Path) -> None:
    """R5.6/R5.7: cycles a↔b and a↔c share a (critical); b and c (background) both yield.

    b and c hold ``shared`` together; a holds ``ra`` and wants ``shared``
    exclusively, so it waits for both, while both wait for ``ra``.  After b is
    taken out, the same check still finds a↔c.
    """
    orch, report, observed = _run(tmp_path, [
        spec("a", priority="critical_path", locks=["ra", "shared"]),
        spec("b", priority="background", calls=1, locks=[["shared", "shared"], "ra"]),
        spec("c", priority="background", calls=2, locks=[["shared", "shared"], "ra"]),
    ])
    _assert_yielded_and_completed(report, observed, ["b", "c"])
    # c also queues behind b for ``ra`` (c → b), so b's cycle may run a → c → b → a;
    # either way each cycle goes through a, and a (critical) is never the victim.
    assert all("a" in e.data["cycle"] for e in observed.events)
    assert len({e.at for e in observed.events}) == 1  # one check found both
    assert_clean(orch)


def test_r5_6_long_chain_without_cycle_has_no_victim(tmp_path: Path) -> None:
    """R5.6: a chain of 100 waits (held past two checks) is not a deadlock."""
    n = 100
    specs = [spec(f"c{i}", locks=[f"r{i}", f"r{i + 1}"], hold_s=1.0) for i in range(n)]
    specs.append(spec("tail", locks=[f"r{n}"], hold_s=25.0))
    orch, report, observed = _run(tmp_path, specs)
    assert observed.victims == []
    assert orch.deadlocks.statistics().checks >= 2
    assert all(o.status == "completed" and o.attempts == 1 for o in report.outcomes.values())
    assert_clean(orch)


def test_r5_6_cycle_that_dissolves_before_the_check_has_no_victim(tmp_path: Path) -> None:
    """R5.6: a↔b forms at t≈1 but b gives up its wait at t≈4, before the 10 s check."""
    orch, report, observed = _run(tmp_path, [
        spec("a", locks=["x", "y"], hold_s=1.0),
        spec("b", locks=["y", "x"], hold_s=1.0, give_up_s=3.0, retry_after_s=5.0),
    ])
    assert observed.victims == []
    assert orch.deadlocks.statistics().checks >= 1
    assert all(o.status == "completed" and o.attempts == 1 for o in report.outcomes.values())
    assert_clean(orch)


def test_r5_6_task_wait_and_lock_wait_form_a_cycle(tmp_path: Path) -> None:
    """R5.6/R5.7: a holds x and waits for task b's result; b waits for x. a yields."""
    orch, report, observed = _run(tmp_path, [
        spec("a", priority="background", locks=["x"], wait_for="b"),
        spec("b", locks=["y", "x"], hold_s=2.0),
    ])
    _assert_yielded_and_completed(report, observed, ["a"])
    assert_clean(orch)


def test_r5_7_retry_limit_fails_with_clear_reason(tmp_path: Path) -> None:
    """R5.7: with max_requeues=0 the victim is not requeued: it fails with a clear reason."""
    orch, report, observed = _run(tmp_path, [
        spec("a", locks=["x", "y"]),
        spec("b", priority="background", locks=["y", "x"]),
    ], deadlock={"max_requeues": 0})
    assert observed.victims == ["b"]
    out = report.outcomes["b"]
    assert out.status == "failed" and out.attempts == 1
    assert "task b aborted: yielded due to deadlock" in out.reason
    assert "no requeue left" in out.reason
    assert report.outcomes["a"].status == "completed"
    assert_clean(orch)


async def test_r5_6_files_write_waits_are_edges(tmp_path: Path) -> None:
    """R5.6: ctx.files.write takes the file's lock; a writer blocked by a holder is an edge."""
    orch = make_orch(tmp_path)
    seen: list[tuple[str, str]] = []
    target = str((tmp_path / "workspace" / "w" / "out.txt").resolve())

    async def watch() -> None:
        await anyio.sleep(1.5)
        seen.extend(orch.waits.who_waits_for_whom())

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        # h holds the file's lock for 3 s; w writes the same file (its workspace path)
        await orch.run([
            spec("h", locks=[f"file:{target}"], hold_s=3.0),
            spec("w", write="out.txt", locks=[], hold_s=0.0),
        ])
    assert_clean(orch)
    assert seen == [("w", "h")]


def test_r5_7_dependency_cycle_fails_instead_of_hanging(tmp_path: Path) -> None:
    """R5.6/R5.7: a depends_on cycle (a ↔ b) is found; the victim fails (a requeue would
    deadlock again) and so does the task that needed it — the run terminates."""
    orch, report, observed = _run(tmp_path, [
        spec("a", depends_on=("b",)),
        spec("b", priority="background", depends_on=("a",)),
    ])
    assert observed.victims == ["b"]
    assert report.outcomes["b"].status == "failed"
    assert "yielded due to deadlock" in report.outcomes["b"].reason
    assert "while waiting for its dependencies" in report.outcomes["b"].reason
    assert report.outcomes["a"].status == "failed"
    assert "dependency b failed" in report.outcomes["a"].reason
    assert_clean(orch)
