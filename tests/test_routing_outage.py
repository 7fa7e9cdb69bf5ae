"""An opus outage from start to restoration, through the real orchestrator and gateway.

R6.1, R6.4–R6.7 together, on trio's MockClock: opus fails mid-run; the
user-waiting task moves to sonnet and the normal-priority one is deferred
(the default replanning policy); the 60 s health check finds opus answering
again; the background task probes it; after 3 successes normal routing is
restored; every notification is emitted exactly once.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from agents import AgentContext
from scheduler import Completion, CompletionRequest, Event, TaskSpec, Usage
from scheduler.core import OverloadedError
from scheduler.testing import build_orchestrator, run_virtual

DOWN_AT, UP_AT = 20.0, 100.0
PROMPT = "Design the storage architecture and weigh the trade-offs"


class OutageProvider:
    """1 s per call; opus answers 529 while ``down``; records (time, task, model)."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: list[tuple[float, str, str, bool]] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        await anyio.sleep(1.0)
        ok = request.model not in self.down
        self.calls.append((anyio.current_time(), request.task_id, request.model, ok))
        if not ok:
            raise OverloadedError(request.model, "overloaded_error", status=529)
        return Completion("ok", Usage(100, 50), request.model, quality=0.9)

    async def aclose(self) -> None:
        return None


class Worker:
    """Makes ``steps`` calls 5 s apart; the runtime replans before each routed call."""

    async def run(self, ctx: AgentContext) -> int:
        for _ in range(int(ctx.task.params.get("steps", 10))):
            await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}])
            await anyio.sleep(5.0)
        return 0


async def scenario(tmp_path: Path) -> tuple[OutageProvider, list[Event], dict[str, str], float]:
    provider = OutageProvider()
    orch = build_orchestrator({"w": Worker}, state_dir=tmp_path, provider=provider)
    events: list[Event] = []
    orch.bus.subscribe(events.append)
    t0 = anyio.current_time()

    async def outage() -> None:
        await anyio.sleep(DOWN_AT)
        provider.down.add("opus")
        await anyio.sleep(UP_AT - DOWN_AT)
        provider.down.discard("opus")

    # the outage drill beside the orchestrator's own services (incl. the 60 s health loop, R6.4)
    assert orch.gateway.health.run in orch.services
    orch.services.append(outage)
    specs = [
        TaskSpec(id="urgent", agent="w", prompt=PROMPT, priority="user_waiting",
                 params={"steps": 12}),
        TaskSpec(id="normal", agent="w", prompt=PROMPT, priority="normal", params={"steps": 12}),
        TaskSpec(id="bg", agent="w", prompt=PROMPT, priority="background", params={"steps": 30}),
    ]
    report = await orch.run(specs)
    status = {k: o.status for k, o in report.outcomes.items()}
    return provider, events, status, t0


async def test_r6_outage_scenario_end_to_end(tmp_path: Path) -> None:
    """R6.1, R6.4–R6.7: outage, fallback and deferral, probing, restoration, single notices."""
    provider, events, status, t0 = await scenario(tmp_path)
    assert status == {"urgent": "completed", "normal": "completed", "bg": "completed"}
    names = [e.name for e in events]
    at = {e.name: e.at - t0 for e in events if e.name.startswith("model_") and
          e.name != "model_fallback"}

    # each health notification exactly once, in order
    health = [n for n in names if n in ("model_unavailable", "model_recovering",
                                        "model_restored")]
    assert health == ["model_unavailable", "model_recovering", "model_restored"]
    unavailable = next(e for e in events if e.name == "model_unavailable")
    assert unavailable.message == (
        "opus temporarily unavailable, switched to sonnet, capability may be limited")
    restored = next(e for e in events if e.name == "model_restored")
    assert restored.message == "model opus is back, best configuration restored"
    assert DOWN_AT < at["model_unavailable"] < DOWN_AT + 10
    # recovery found by a 60 s check after opus came back (R6.4)
    assert at["model_recovering"] > UP_AT and round(at["model_recovering"]) % 60 <= 3

    def calls(task: str, lo: float, hi: float) -> list[str]:
        return [m for t, k, m, _ in provider.calls if k == task and lo < t - t0 <= hi]

    outage = (at["model_unavailable"] + 1.0, at["model_recovering"])
    probation = (at["model_recovering"], at["model_restored"])
    # during the outage: the urgent task moves to sonnet; the normal one is deferred;
    # the background one waits too (opus is its model and it is not urgent)
    assert set(calls("urgent", *outage)) == {"sonnet"}
    assert calls("normal", *outage) == [] and calls("bg", *outage) == []
    # while recovering only the background task probes opus; 3 successes restore it
    assert calls("bg", *probation) == ["opus", "opus", "opus"]
    assert "opus" not in calls("normal", *probation)
    assert "opus" not in calls("urgent", *probation)
    # after restoration everyone is back on opus
    after = (at["model_restored"] + 1.0, 1e9)
    assert set(calls("normal", *after)) == {"opus"}
    assert set(calls("bg", *after)) <= {"opus"}
    # deferral notices: once per deferred task, each resumed once
    deferred = sorted(e.task_id or "" for e in events if e.name == "task_deferred")
    resumed = sorted(e.task_id or "" for e in events if e.name == "task_resumed")
    assert deferred == resumed == ["bg", "normal"]


def test_r6_outage_scenario_is_reproducible(tmp_path: Path) -> None:
    """The same scenario gives the same call trace (virtual time, no randomness)."""

    def trace(path: Path) -> list[tuple[float, str, str, bool]]:
        provider, _, _, t0 = run_virtual(scenario, path)
        return sorted((round(t - t0, 6), k, m, ok) for t, k, m, ok in provider.calls)

    assert trace(tmp_path / "a") == trace(tmp_path / "b")
