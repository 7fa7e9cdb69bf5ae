"""The built-in demo workload: 24 agents, mixed task types and priorities."""

from __future__ import annotations

from pathlib import Path

from ._config import AlertsConfig, SimulatedProviderConfig, TaskSpec, VibeConfig

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


def demo_config(state_dir: Path, *, tasks: int = 24, seed: int = 0,
                time_scale: float = 0.25) -> VibeConfig:
    """The demo's config: SQLite under ``state_dir``, simulated provider, no API key."""
    return VibeConfig(
        state_dir=state_dir,
        store="sqlite",
        seed=seed,
        tasks=tuple(demo_tasks(tasks)),
        # unattended: a pause nobody answers saves and finishes the task (R3.4)
        alerts=AlertsConfig(decision_timeout_s=30.0),
        provider={
            "kind": "simulated",
            "simulated": SimulatedProviderConfig(seed=seed, time_scale=time_scale),
        },
    )
