"""R1.1, R1.2 under concurrency: what is under way at once is held before it is charged.

The first calls of a process, all in flight at once, hold what they will use: tiktoken
counts Claude's tokens low (the provider's count is about 1.2× its count); each model's
calibration corrects that once it has answered.  Before any model had
answered, every call held tiktoken's raw count: a busy process's first wave -- hundreds
of tasks at once, or a freshly started ``serve`` replica under load -- passed a budget by
a fifth of its prompts (four replicas on one key of 100,000 tokens: 110,025 spent).

File edits and shell commands under way are held like a call's tokens: each was only
checked before it ran and counted after, so 120 tasks running a command at once under a
session limit of 50 commands ran 120.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from agents import AgentContext
from scheduler import TaskSpec
from scheduler.budget import TokenCounter
from scheduler.core import Completion, CompletionRequest, Usage
from scheduler.testing import build_orchestrator, run_virtual

RATIO = 1.2  # the provider counts a fifth more than tiktoken
LIMIT = 100_000
OUT = 50
TASKS = 120
MESSAGES = [{"role": "user", "content": "Refactor the parser module, keep its tests. " * 200}]


class _ClaudeCounting:
    """Answers after a second (so every admitted call is in flight together), reporting
    the prompt as the provider counts it: ``RATIO`` × tiktoken's count."""

    def __init__(self) -> None:
        self.counter = TokenCounter()
        self.spent = 0
        self.calls = 0
        self.in_flight = self.max_in_flight = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await anyio.sleep(1.0)
        self.in_flight -= 1
        raw = self.counter.count_prompt(request.messages, system=request.system,
                                        tools=request.tools)
        usage = Usage(round(raw * RATIO), OUT)
        self.spent += usage.prompt_tokens + usage.completion_tokens
        self.calls += 1
        return Completion("ok", usage, request.model)

    async def aclose(self) -> None:
        return None


class _OneCall:
    async def run(self, ctx: AgentContext) -> str:
        await ctx.llm.complete(MESSAGES, max_tokens=OUT)
        return "ok"


def test_r1_2_r2_3_r3_4_a_first_wave_of_calls_stays_within_the_session_budget(
        tmp_path: Path) -> None:
    """R1.2, R2.3: 120 tasks start at once under a session budget of 100,000 tokens; the
    calls admitted are all in flight before any has answered.  What they spend stays
    within the budget (it used to reach 117,888: 48 calls holding 2,050 and using 2,456).

    R3.4: the calls refused while the first wave held the budget wait for it to be
    charged, then run while the budget lasts; only then do tasks pause.  They used to
    pause at once, and with nobody to decide the run ended at 78,592 tokens: 32 calls."""

    async def main() -> _ClaudeCounting:
        provider = _ClaudeCounting()
        orch = build_orchestrator(
            {"one": _OneCall}, state_dir=tmp_path, provider=provider,
            budgets={"session": {"tokens": LIMIT}, "day": {}, "weekend_day_cost_usd": None},
            alerts={"decision_timeout_s": 5.0},
            allocator={"pools": {"anthropic": {"concurrent": 200}}},
        )
        await orch.run([TaskSpec(id=f"t{i}", agent="one", prompt="refactor the parser")
                        for i in range(TASKS)])
        return provider

    provider = run_virtual(main)
    assert provider.max_in_flight > 20  # a first wave, none calibrated
    assert provider.spent <= LIMIT, (provider.spent, provider.calls)
    assert provider.calls > provider.max_in_flight  # a second wave, within what was left
    assert LIMIT - provider.spent < provider.spent // provider.calls * 1.5  # to its end


class _OneCommand:
    async def run(self, ctx: AgentContext) -> str:
        await ctx.shell.run("true")
        return "ok"


def test_r1_1_r1_2_commands_under_way_at_once_stay_within_the_session_limit(
        tmp_path: Path) -> None:
    """R1.1, R1.2: 30 tasks each run one shell command at once under a session limit of
    10 commands: 10 run and are counted; the others pause at the limit (R3.4) and, with
    no decision, finish without running theirs (all 30 ran before)."""

    async def main() -> tuple[int, list[str]]:
        orch = build_orchestrator(
            {"cmd": _OneCommand}, state_dir=tmp_path,
            budgets={"session": {"shell_commands": 10}, "day": {},
                     "weekend_day_cost_usd": None},
            alerts={"decision_timeout_s": 5.0},
        )
        report = await orch.run([TaskSpec(id=f"t{i}", agent="cmd", prompt="run it")
                                 for i in range(30)])
        return (orch.tracker.session.totals.shell_commands,
                [str(o.status) for o in report.outcomes.values()])

    commands, statuses = run_virtual(main)
    assert commands == 10
    assert statuses.count("completed") == 10
