"""A seeded simulation of a coding-agent workload for the routing benchmark.

Every assumption the benchmark's figures depend on is a constant here and is
documented in ``docs/routing.md``:

* ``TEMPLATES``: the task mix — ten kinds of task with a weight, a task type, a
  prompt, a range of output tokens, a reasoning depth the router is told, the
  (hidden) chance that an instance is simple, moderate or complex, and how many
  *exploration* calls precede the main call;
* an agent task is several routed calls, as in the runtime (the gateway routes
  every call): ``explore`` calls that read and summarise code (direct, short
  answers, a few thousand tokens of files read each, always simple), then the
  main call that does the work and decides the task's success;
* ``SUCCESS``: the chance that one attempt on a tier succeeds, by hidden
  difficulty;
* ``JUDGE_CATCHES`` / ``JUDGE_FALSE_ALARM``: how often an LLM-as-judge score is
  below 0.5 for a failed / successful attempt;
* main call: prompt tokens ≈ 2 × output tokens + 2,000 of context per attempt;
  exploration call: 2,000–10,000 tokens of files read + 2,000 of context in,
  150–1,000 tokens out;
* prices: the default model catalog of ``VibeConfig.models``.

Outcomes are *common random numbers*: attempt ``k`` of task ``i`` on tier ``t``
has the same outcome in every arm, so the routed run and the always-opus
baseline face the same luck.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from policies.complexity import ComplexityPolicy, Depth, TaskInfo
from scheduler import VibeConfig
from scheduler.core import EventBus
from scheduler.routing import ModelCatalog, Router

Difficulty = Literal["simple", "moderate", "complex"]
MAX_ATTEMPTS = 3
CONTEXT_TOKENS = 2_000


@dataclass(frozen=True, slots=True)
class Template:
    weight: float
    task_type: str
    prompt: str
    output_tokens: tuple[int, int]
    depth: Depth
    #: hidden difficulty mix (simple, moderate, complex)
    mix: tuple[float, float, float]
    #: how many exploration calls (read and summarise code) precede the main call
    explore: tuple[int, int] = (1, 2)


TEMPLATES: tuple[Template, ...] = (
    Template(0.16, "code_modification", "format the {m} module", (300, 2_500), "direct",
             (0.95, 0.05, 0.0), (1, 2)),
    Template(0.12, "code_modification", "update the docs of {m}", (500, 3_000), "direct",
             (0.95, 0.05, 0.0), (1, 2)),
    Template(0.15, "question_answering", "explain how {m} works", (300, 2_000), "direct",
             (0.85, 0.15, 0.0), (1, 3)),
    Template(0.10, "code_modification", "rename the helpers in {m}", (1_000, 4_000), "direct",
             (0.85, 0.15, 0.0), (1, 3)),
    Template(0.10, "bug_fix", "fix the off-by-one bug in {m}", (1_000, 4_500), "direct",
             (0.50, 0.45, 0.05), (2, 4)),
    Template(0.10, "bug_fix", "investigate and fix the race in {m}", (6_000, 15_000),
             "multi_step", (0.10, 0.65, 0.25), (3, 6)),
    Template(0.10, "feature_implementation", "implement the {m} endpoint", (8_000, 18_000),
             "multi_step", (0.10, 0.70, 0.20), (2, 5)),
    Template(0.07, "feature_implementation", "write tests for {m}", (5_000, 12_000),
             "multi_step", (0.30, 0.65, 0.05), (2, 4)),
    Template(0.05, "architecture_design", "design the {m} architecture and its trade-offs",
             (20_000, 40_000), "architecture", (0.0, 0.30, 0.70), (4, 8)),
    Template(0.05, "code_modification", "security review of {m}", (5_000, 15_000),
             "multi_step", (0.0, 0.40, 0.60), (4, 8)),
)
#: what an exploration call asks (no keyword of a moderate or complex kind, R4.1).
EXPLORE_PROMPT = "summarise the {m} code this task reads"
EXPLORE_OUTPUT = (150, 1_000)
EXPLORE_READ = (2_000, 10_000)
MODULES = ("parser", "cache", "auth", "billing", "scheduler", "storage", "search", "cli")

#: chance that one attempt succeeds, by tier and hidden difficulty.
SUCCESS: dict[str, dict[Difficulty, float]] = {
    "haiku": {"simple": 0.92, "moderate": 0.60, "complex": 0.25},
    "sonnet": {"simple": 0.97, "moderate": 0.92, "complex": 0.70},
    "opus": {"simple": 0.98, "moderate": 0.95, "complex": 0.90},
}
#: chance the judge scores a failed attempt below 0.5 (else it looks fine but fails later).
JUDGE_CATCHES = 0.70
#: chance the judge scores a successful attempt below 0.5.
JUDGE_FALSE_ALARM = 0.03


@dataclass(frozen=True, slots=True)
class SimCall:
    """One exploration call of a task: what the router sees and the tokens it reads."""

    info: TaskInfo
    output_tokens: int
    read_tokens: int


@dataclass(frozen=True, slots=True)
class SimTask:
    index: int
    info: TaskInfo
    difficulty: Difficulty
    output_tokens: int
    cost_limit_usd: float
    explore: tuple[SimCall, ...] = ()


@dataclass(slots=True)
class ArmResult:
    cost_usd: float = 0.0
    succeeded: int = 0
    tasks: int = 0
    quality_sum: float = 0.0
    attempts: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    upgrades: int = 0

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.tasks if self.tasks else 0.0

    @property
    def mean_quality(self) -> float:
        return self.quality_sum / self.tasks if self.tasks else 0.0


def _rng(*key: object) -> random.Random:
    digest = hashlib.blake2b(":".join(map(str, key)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def workload(seed: int, n: int, config: VibeConfig) -> list[SimTask]:
    rng = random.Random(seed)
    weights = [t.weight for t in TEMPLATES]
    out: list[SimTask] = []
    for i in range(n):
        tpl = rng.choices(TEMPLATES, weights)[0]
        diff: Difficulty = rng.choices(("simple", "moderate", "complex"), tpl.mix)[0]
        tokens = rng.randint(*tpl.output_tokens)
        complexity: Difficulty = (
            "simple" if tokens < 5_000 else "complex" if tokens > 20_000 else "moderate"
        )
        info = TaskInfo(
            task_id=f"t{i}", task_type=tpl.task_type, complexity=complexity,
            prompt=tpl.prompt.format(m=rng.choice(MODULES)), expected_output_tokens=tokens,
            reasoning_depth=tpl.depth, priority=2,
        )
        limit = config.task_types[tpl.task_type].cost_usd  # type: ignore[index]
        module = rng.choice(MODULES)
        explore = []
        for _ in range(rng.randint(*tpl.explore)):
            out_tokens = rng.randint(*EXPLORE_OUTPUT)
            call = TaskInfo(task_id=info.task_id, task_type=tpl.task_type, complexity="simple",
                            prompt=EXPLORE_PROMPT.format(m=module),
                            expected_output_tokens=out_tokens, reasoning_depth="direct",
                            priority=2)
            explore.append(SimCall(call, out_tokens, rng.randint(*EXPLORE_READ)))
        out.append(SimTask(i, info, diff, tokens, limit, tuple(explore)))
    return out


def attempt(seed: int, task: SimTask, k: int, tier: str, step: int = -1,
            ) -> tuple[bool, float, int]:
    """Outcome of attempt ``k`` of ``task``'s call ``step`` (-1: the main call) on ``tier``:
    success, judge quality, output tokens."""
    rng = _rng(seed, task.index, step, k, tier)
    difficulty: Difficulty = task.difficulty if step < 0 else "simple"
    expected = task.output_tokens if step < 0 else task.explore[step].output_tokens
    ok = rng.random() < SUCCESS[tier][difficulty]
    flagged = rng.random() < (JUDGE_FALSE_ALARM if ok else JUDGE_CATCHES)
    quality = rng.uniform(0.1, 0.49) if flagged else rng.uniform(0.5, 1.0) if not ok else (
        rng.uniform(0.65, 1.0))
    tokens = max(100, int(expected * rng.uniform(0.8, 1.2)))
    return ok, quality, tokens


def call_cost(catalog: ModelCatalog, tier: str, output_tokens: int,
              prompt_tokens: int | None = None) -> float:
    e = catalog.entry(tier)
    prompt = 2 * output_tokens + CONTEXT_TOKENS if prompt_tokens is None else prompt_tokens
    return (prompt * e.input_usd_per_mtok + output_tokens * e.output_usd_per_mtok) / 1e6


def run_arm(
    seed: int, tasks: list[SimTask], config: VibeConfig, routed: bool,
    complexity: ComplexityPolicy | None = None, oracle: bool = False,
    single_call: bool = False,
) -> ArmResult:
    """Run every task; ``routed`` uses the real Router, else every attempt goes to opus.

    ``oracle`` (a ceiling, not a router): each call goes to the tier of its hidden
    difficulty (simple → haiku, moderate → sonnet, complex → opus), one tier up per retry.
    ``single_call``: leave the exploration calls out (each task is its main call only).
    """
    catalog = ModelCatalog(config)
    bus = EventBus(lambda: 0.0, history=1)
    router = Router(config, bus=bus, catalog=catalog, clock=lambda: 0.0, complexity=complexity)
    res = ArmResult()
    levels = ("simple", "moderate", "complex")
    for task in tasks:
        spent = 0.0
        steps = [-1] if single_call else [*range(len(task.explore)), -1]
        ok, quality = False, 0.0
        for step in steps:  # the exploration calls, then the main call
            info = task.info if step < 0 else task.explore[step].info
            difficulty = task.difficulty if step < 0 else "simple"
            for k in range(MAX_ATTEMPTS):
                fraction = spent / task.cost_limit_usd if task.cost_limit_usd else 0.0
                if oracle:
                    rank = levels.index(difficulty) + k
                    tier = catalog.tiers[min(rank, len(catalog.tiers) - 1)]
                else:
                    tier = router.choose(info, fraction).model if routed else catalog.strongest
                ok, quality, tokens = attempt(seed, task, k, tier, step)
                read = None if step < 0 else task.explore[step].read_tokens + CONTEXT_TOKENS
                cost = call_cost(catalog, tier, tokens, read)
                spent += cost
                res.cost_usd += cost
                res.attempts += 1
                res.by_model[tier] += 1
                if routed:
                    up = router.report_outcome(info, tier, success=ok, quality=quality)
                    res.upgrades += up is not None
                # the runtime sees the judge's score and whether the call's work then failed
                if ok and quality >= config.routing.quality_floor:
                    break
        router.forget(task.info.task_id)
        res.tasks += 1
        res.succeeded += ok  # the main call decides the task
        res.quality_sum += quality if ok else 0.0
    return res
