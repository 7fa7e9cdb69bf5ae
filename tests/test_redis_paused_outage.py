"""R3.4: a task paused at its budget survives a Redis outage while it waits.

The pause polls the store for a decision made elsewhere (``vibe-engine decide`` from
another terminal); a poll that found Redis unreachable failed the task, for good
(``resume`` keeps a failed task's result), and the run ended with the error.  Nothing may
be lost while paused: the task stays paused through the outage, and the decision made
after it is applied.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

import anyio

from scheduler import TaskSpec, VibeConfig
from scheduler.tasks import TaskStatus
from scheduler.testing import build_orchestrator, run_real
from tests._redis_helpers import TcpProxy


class _TwoCalls:
    async def run(self, ctx: Any) -> str:
        for _ in range(2):
            await ctx.llm.complete([{"role": "user", "content": "hi"}], max_tokens=100)
        return "done"


def test_r3_4_a_paused_task_on_redis_stays_paused_through_an_outage_and_continues(
        tmp_path: Path, redis_ns: str) -> None:
    """R3.4: paused at its task budget, the task sees Redis cut for longer than two decision
    polls, then ``add_budget``: it completes (before: failed with StoreUnavailableError)."""
    with closing(TcpProxy()) as proxy:
        config = VibeConfig.model_validate({
            "state_dir": tmp_path, "store": f"{proxy.url}?namespace={redis_ns}",
            "session_id": "outage"})
        orch = build_orchestrator({"a": _TwoCalls}, config=config)
        spec = TaskSpec(id="w", agent="a", prompt="x", budget={"tokens": 300})
        ran: dict[str, Any] = {}

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                async def run() -> None:
                    try:
                        ran["report"] = await orch.run([spec])
                    finally:
                        tg.cancel_scope.cancel()

                tg.start_soon(run)
                while not any(e.name == "task_paused" for e in orch.bus.history):  # noqa: ASYNC110
                    await anyio.sleep(0.02)  # the bus keeps a history, signals nothing here
                proxy.cut()
                await anyio.sleep(2.5)  # the pause polls the store every second
                proxy.restore()
                assert await orch.decide("w", "add_budget", tokens=5000)
                await anyio.sleep_forever()  # until the run ends

        run_real(main)  # redis.asyncio: asyncio
    names = [e.name for e in orch.bus.history if e.name.startswith("task_")]
    assert names == ["task_paused", "task_completed"]
    assert ran["report"].outcomes["w"].status is TaskStatus.COMPLETED
