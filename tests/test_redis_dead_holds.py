"""R1.5 / R3.4: the budget holds of a run SIGKILLed mid-call on Redis do not outlive it.

A killed call is charged at its estimate by the next start (its ``open_call`` record);
its hold, left in Redis until ``hold_ttl_s`` (10 minutes), counted it a second time
against the day budget, so the run resumed after the crash was paused at a limit it had
room for.  As on SQLite, a refused hold frees the holds of this host's dead processes.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from scheduler import TaskSpec, VibeConfig
from scheduler.store._redis import RedisStore
from scheduler.testing import build_orchestrator, run_real
from tests._redis_helpers import REDIS_URL
from tests.test_open_call_recovery import DAY_SCOPE, ESTIMATE, kill, killed_replica


class _OneCall:
    async def run(self, ctx: object) -> str:
        reply = await ctx.llm.complete(  # type: ignore[attr-defined]
            [{"role": "user", "content": "hi"}], max_tokens=100)
        return str(reply.text)


def test_r1_5_a_run_after_a_kill_on_redis_is_not_refused_by_the_killed_calls_hold(
        tmp_path: Path, redis_ns: str) -> None:
    """R1.5: after a replica is killed mid-call, a run on the same Redis day budget -- room
    for the killed call's estimate and its own call, not for that call held a second time
    -- completes, and the day holds the estimate once plus the run's own call."""
    state = tmp_path / "state"
    state.mkdir()
    with killed_replica("redis", redis_ns, str(state / "redis-spool.jsonl")) as proc:
        kill(proc)
    config = VibeConfig.model_validate({
        "state_dir": state, "store": f"{REDIS_URL}?namespace={redis_ns}",
        "session_id": "after", "budgets": {"day": {"tokens": ESTIMATE + 600}}})
    orch = build_orchestrator({"a": _OneCall}, config=config)

    async def main() -> tuple[int, int]:
        async with anyio.create_task_group() as tg:
            async def run() -> None:
                await orch.run([TaskSpec(id="w", agent="a", prompt="x")])
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            # a paused task waits for a decision: end the run there
            while not any(e.name == "task_paused" for e in orch.bus.history):  # noqa: ASYNC110
                await anyio.sleep(0.02)  # the bus keeps a history, signals nothing here
            tg.cancel_scope.cancel()
        store = RedisStore(REDIS_URL, namespace=redis_ns, spool_path=state / "read-spool")
        await store.open()
        try:
            day = (await store.totals(DAY_SCOPE)).tokens
            return orch.tracker.task_scope("w").totals.tokens, day
        finally:
            await store.aclose()

    own, day = run_real(main)  # redis.asyncio: asyncio
    paused = [e.message for e in orch.bus.history if e.name == "task_paused"]
    assert paused == []
    assert own > 0 and day == ESTIMATE + own
