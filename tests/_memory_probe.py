"""``python -m tests._memory_probe N STATE_DIR``: the Python memory per agent of a run of N
agents that wait for their turn (a pool of 2 calls), printed as bytes.

Run in a fresh interpreter by the R7.1 memory test: in a long-lived pytest worker the
interpreter's own tables, grown by every earlier test, can resize inside the measured
window (one ``sys.intern`` resized the table of interned strings by 3.7 MB, doubling the
figure), so the figure would depend on which tests ran before."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from pathlib import Path

import anyio

from scheduler import TaskSpec, Usage, VibeConfig
from scheduler.runtime import AgentContext
from scheduler.testing import InstantProvider, build_orchestrator


class TwoCalls:
    async def run(self, ctx: AgentContext) -> None:
        for _ in range(2):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=16)


async def per_agent(n: int, state_dir: Path) -> float:
    """Bytes of tracemalloc's peak above the memory before the config is built, per agent
    (the agents' task specs included); the run must complete every task."""
    warm = build_orchestrator({"a": TwoCalls}, state_dir=state_dir / "warm",
                              provider=InstantProvider(Usage(20, 5)))
    await warm.run([TaskSpec(id="t", agent="a")])  # imports, the tokenizer's tables
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        config = VibeConfig.model_validate({
            "state_dir": str(state_dir / "run"), "session_id": "s1",  # the default: SQLite
            "allocator": {"pools": {"anthropic": {"concurrent": 2}}},
            "tasks": [{"id": f"t{i}", "agent": "a", "prompt": "x"} for i in range(n)]})
        orch = build_orchestrator({"a": TwoCalls}, config=config,
                                  provider=InstantProvider(Usage(20, 5)))
        report = await orch.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    statuses = {o.status for o in report.outcomes.values()}
    if statuses != {"completed"}:
        raise SystemExit(f"not every task completed: {statuses}")
    return (peak - base) / n


def main() -> None:
    n, state_dir = int(sys.argv[1]), Path(sys.argv[2])
    print(anyio.run(per_agent, n, state_dir, backend="asyncio"))


if __name__ == "__main__":
    main()
