"""R3.1: the 70 / 90 / 100 % alerts of file edits and shell commands fire in a real run.

An operation's charge returned its threshold crossings and marked them fired, but nobody
applied them: a run that used a whole file-edit or shell-command budget told no warning,
no critical, no exceeded (a model call's charge applies its own)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import pytest

from scheduler import TaskSpec
from scheduler.core import Event
from scheduler.testing import build_orchestrator, run_virtual


class _Edits:
    async def run(self, ctx: object) -> str:
        for i in range(10):
            await ctx.files.write(f"f{i}.txt", "x")  # type: ignore[attr-defined]
        return "ok"


class _Commands:
    async def run(self, ctx: object) -> str:
        for _ in range(10):
            await ctx.shell.run("true")  # type: ignore[attr-defined]
        return "ok"


@pytest.mark.parametrize(("dimension", "agent"), [("file_edits", _Edits),
                                                  ("shell_commands", _Commands)])
def test_r3_1_operation_thresholds_fire_once_each(tmp_path: Path, dimension: str,
                                                 agent: type) -> None:
    async def main() -> Counter[tuple[str, str, str]]:
        orch = build_orchestrator(
            {"a": agent}, state_dir=tmp_path,
            budgets={"session": {dimension: 10}, "day": {}, "weekend_day_cost_usd": None},
        )
        seen: list[Event] = []
        orch.bus.subscribe(seen.append)
        await orch.run([TaskSpec(id="t", agent="a", prompt="edit")])
        return Counter((e.name, e.data["scope"], e.data["dimension"]) for e in seen
                       if e.name.startswith("budget_"))

    # a real clock: a command is a real process, its timeout real time
    fired = run_virtual(main) if dimension == "file_edits" else anyio.run(main)
    assert fired == {(f"budget_{level}", "session:s1", dimension): 1
                     for level in ("warning", "critical", "exceeded")}
