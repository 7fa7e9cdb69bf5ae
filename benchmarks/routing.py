"""Routing against always-opus on a seeded simulated workload (SPEC R4.4).

``python -m benchmarks.routing --json [--quick]``

Both arms run the same tasks with the same per-attempt luck (common random
numbers, see ``benchmarks/_routing_sim.py``).  A task is its exploration calls
(read and summarise code) then its main call, each routed on its own as the
gateway does; each call gets up to 3 attempts, retried when it failed or the
judge scored it below 0.5.  The routed arm
uses the real :class:`scheduler.routing._router.Router` with the default policies —
complexity scoring, budget pressure, and R4.3 upgrades and learning, whose
retries cost money like any other call.  The baseline sends every attempt to
opus.

* ``cost_reduction_pct``: 100 × (1 − routed cost ÷ always-opus cost);
* ``success_rate`` / ``baseline_success_rate``: tasks whose final attempt succeeded;
* ``quality_retained_pct``: routed mean delivered quality ÷ baseline's (a failed
  task delivers 0);
* ``success_retained_pct``: success_rate ÷ baseline_success_rate;
* ``sensitivity``: the cost reduction of the same workload (a) without R4.3
  learning (``correction_points=0``), (b) priced with the previous opus
  generation ($15/$75 per Mtok, when opus cost 5× sonnet rather than 1.67×),
  and (c) with every task reduced to its main call (no exploration calls);
* ``oracle_cost_reduction_pct``: the ceiling of this workload — each task sent to
  the tier of its hidden difficulty (one tier up per retry), which no router can know.

Each figure is the median over the seeds.  The simulation's assumptions are in
``docs/routing.md``.
"""

from __future__ import annotations

import logging
import statistics
import sys
from typing import Any

import structlog

from benchmarks._common import emit, parse_args, progress
from benchmarks._routing_sim import TEMPLATES, run_arm, workload
from policies.complexity import ComplexityParams, ScoredComplexity
from scheduler import VibeConfig


def _quiet_logs() -> None:
    """Upgrades log at warning level; keep stdout for the JSON object only."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


# the earlier opus price; ``rank`` kept, or opus would drop out of the tier order
OLD_OPUS = {"model_id": "claude-opus-4-1", "input_usd_per_mtok": 15.0,
            "output_usd_per_mtok": 75.0}


def _reduction(seed: int, tasks: Any, config: VibeConfig, single_call: bool = False,
               **kw: Any) -> float:
    routed = run_arm(seed, tasks, config, routed=True, single_call=single_call, **kw)
    base = run_arm(seed, tasks, config, routed=False, single_call=single_call)
    return 100 * (1 - routed.cost_usd / base.cost_usd)


def one_seed(seed: int, n: int, config: VibeConfig) -> dict[str, Any]:
    tasks = workload(seed, n, config)
    routed = run_arm(seed, tasks, config, routed=True)
    base = run_arm(seed, tasks, config, routed=False)
    no_learning = ScoredComplexity(ComplexityParams(correction_points=0))
    old_opus = config.models["opus"].model_copy(update=OLD_OPUS)
    old_prices = config.model_copy(update={"models": {**config.models, "opus": old_opus}})
    return {
        "cost_reduction_pct": 100 * (1 - routed.cost_usd / base.cost_usd),
        "success_rate": routed.success_rate,
        "baseline_success_rate": base.success_rate,
        "quality_retained_pct": 100 * routed.mean_quality / base.mean_quality,
        "success_retained_pct": 100 * routed.success_rate / base.success_rate,
        "routed_cost_usd": routed.cost_usd,
        "baseline_cost_usd": base.cost_usd,
        "attempts_per_task": routed.attempts / routed.tasks,
        "baseline_attempts_per_task": base.attempts / base.tasks,
        "upgrades_per_100_tasks": 100 * routed.upgrades / routed.tasks,
        "calls_by_model_pct": {m: round(100 * c / routed.attempts, 1)
                               for m, c in sorted(routed.by_model.items())},
        "sensitivity_no_learning_cost_reduction_pct": _reduction(
            seed, tasks, config, complexity=no_learning),
        "sensitivity_opus_15_75_cost_reduction_pct": _reduction(seed, tasks, old_prices),
        "sensitivity_single_call_tasks_cost_reduction_pct": _reduction(
            seed, tasks, config, single_call=True),
        "oracle_cost_reduction_pct": _reduction(seed, tasks, config, oracle=True),
    }


def main() -> None:
    args = parse_args(__doc__ or "routing benchmark")
    _quiet_logs()
    n = 1_000 if args.quick else 5_000
    seeds = list(range(args.repeat or (3 if args.quick else 7)))
    config = VibeConfig()
    runs = []
    for seed in seeds:
        runs.append(one_seed(seed, n, config))
        progress(f"seed {seed}: cost -{runs[-1]['cost_reduction_pct']:.1f}%, "
                 f"success {runs[-1]['success_rate']:.3f} vs "
                 f"{runs[-1]['baseline_success_rate']:.3f}")
    scalar = [k for k, v in runs[0].items() if isinstance(v, float)]
    results: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 4)
                               for k in scalar}
    results["calls_by_model_pct"] = runs[len(runs) // 2]["calls_by_model_pct"]
    results["per_seed_cost_reduction_pct"] = [round(r["cost_reduction_pct"], 2) for r in runs]
    sizes = {"tasks": n, "seeds": len(seeds), "templates": len(TEMPLATES), "max_attempts": 3}
    emit("routing", sizes, results, ("anyio", "pydantic", "structlog"), args.json)


if __name__ == "__main__":
    main()
