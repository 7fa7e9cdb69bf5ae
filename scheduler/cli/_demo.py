"""The built-in demo workload: 24 agents, mixed task types and priorities.

The provider account is small (6 concurrent calls), so agents queue for leases.
Besides the routine mix it stages the two situations people most need to see:

* an **opus outage** (529s from 0.3 s to 2.5 s after the first call): the urgent
  design tasks fall back to sonnet, the non-urgent one (``t25``) is *deferred*
  until the health checks (every second in the demo) restore opus (R6.1, R6.4–R6.7);
* a task with a **tight budget** (``t26``, 5,000 tokens): it is *paused* at 100 %
  and, since nobody decides within ``alerts.decision_timeout_s`` (3 s in the
  demo), saved and finished (R3.4) — in another terminal
  ``vibe-engine decide t26 add --tokens 20000`` would let it continue.
"""

from __future__ import annotations

from pathlib import Path

from scheduler.config import (
    AlertsConfig,
    AllocatorConfig,
    HealthConfig,
    Limits,
    OutageWindow,
    PoolConfig,
    SimulatedProviderConfig,
    TaskSpec,
    VibeConfig,
)

_QUESTIONS = [
    "What does the retry decorator in utils do?",
    "Explain why the cache test is flaky?",
    "Where is the config loaded?",
    "How does the session budget reset?",
]
_FIXES = [
    "Fix the crash when the config file is empty",
    "Fix the off-by-one error in pagination",
    "Fix the regression in the CSV exporter",
]
_CHANGES = [
    "Rename the helper module and update imports",
    "Update the docstring of the scheduler entry point",
    "Format the settings file",
]
_FEATURES = [
    "Implement an export endpoint for usage reports",
    "Add support for per-team budgets",
]
_DESIGNS = ["Design the architecture for multi-region failover, with trade-offs"]


def demo_tasks(n: int = 24) -> list[TaskSpec]:
    """A deterministic mix of question answering, edits, fixes, features and design."""
    specs: list[TaskSpec] = []
    pools = [
        ("qa", _QUESTIONS, "user_waiting", {"difficulty": 0.1}),
        ("coder", _FIXES, "normal", {"steps": 3, "difficulty": 0.4}),
        ("coder", _CHANGES, "background", {"steps": 2, "difficulty": 0.2}),
        ("coder", _FEATURES, "normal", {"steps": 4, "difficulty": 0.5}),
        ("refactor", _DESIGNS, "critical_path", {"steps": 3, "difficulty": 0.7}),
    ]
    i = 0
    while len(specs) < n:
        agent, prompts, priority, params = pools[i % len(pools)]
        prompt = prompts[(i // len(pools)) % len(prompts)]
        specs.append(
            TaskSpec(id=f"t{len(specs) + 1:02d}", agent=agent, prompt=prompt,
                     priority=priority, params=dict(params))
        )
        i += 1
    return specs


def staged_tasks(after: str, first: int = 25) -> list[TaskSpec]:
    """The deferred and the paused task (see the module docstring), numbered from ``first``;
    the deferred one starts after ``after``."""
    return [
        TaskSpec(id=f"t{first:02d}", agent="refactor", priority="normal", depends_on=(after,),
                 prompt="Design the architecture of the plugin sandbox, weighing the trade-offs",
                 params={"steps": 2, "difficulty": 0.7}),
        TaskSpec(id=f"t{first + 1:02d}", agent="coder", priority="normal",
                 prompt="Implement retries for the webhook sender", budget=Limits(tokens=5_000),
                 params={"steps": 4, "difficulty": 0.4}),
    ]


def demo_config(state_dir: Path, *, tasks: int = 24, seed: int = 0,
                time_scale: float = 0.25, staged: bool = True,
                decision_timeout_s: float = 3.0) -> VibeConfig:
    """The demo's config: SQLite under ``state_dir``, simulated provider, no API key.

    ``staged``: add the opus outage, the deferred and the paused task.
    """
    specs = demo_tasks(tasks)
    outages: tuple[OutageWindow, ...] = ()
    if staged and specs:
        specs += staged_tasks(after=specs[0].id, first=len(specs) + 1)
        outages = (OutageWindow(model="opus", start_s=0.3, end_s=2.5),)
    return VibeConfig(
        state_dir=state_dir,
        store="sqlite",
        seed=seed,
        tasks=tuple(specs),
        # unattended: a pause nobody answers saves and finishes the task (R3.4)
        alerts=AlertsConfig(decision_timeout_s=decision_timeout_s),
        health=HealthConfig(interval_s=1.0),
        # a small account: 6 concurrent calls, so agents queue for leases (R5)
        allocator=AllocatorConfig(pools={"anthropic": PoolConfig(concurrent=6)}),
        provider={
            "kind": "simulated",
            "simulated": SimulatedProviderConfig(seed=seed, time_scale=time_scale,
                                                 outages=outages),
        },
    )
