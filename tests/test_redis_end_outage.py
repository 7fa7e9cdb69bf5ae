"""R2.6: a run whose tasks all completed while Redis went down before its end.

Usage and records written during the outage wait in the durable local spool and are
applied at the next start; ``vibe-engine run`` exited 2 (``error: Redis unreachable
(state)``: the session's end read its record) although every task completed.  The exit
code follows the tasks' outcomes, one warning line says how many writes wait in the
spool, and once Redis is back the next start applies them: ``report`` shows each token
exactly once.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

import agents
from tests._cli_helpers import cli
from tests._redis_helpers import TcpProxy

_SEEN: dict[str, int] = {}


class _CutsRedisBeforeItsLastCall:
    """Two calls; Redis goes down between them (fail-open: the second runs on the local
    allowance and its usage is spooled), then the task completes."""

    proxy: TcpProxy

    async def run(self, ctx: Any) -> str:
        for i in range(2):
            if i == 1:
                self.proxy.cut()
            reply = await ctx.llm.complete([{"role": "user", "content": f"q{i}"}],
                                           max_tokens=50)
            _SEEN["tokens"] = _SEEN.get("tokens", 0) + reply.usage.total_tokens
        return "done"


def _config(tmp_path: Path, url: str, ns: str, tasks: list[dict[str, Any]]) -> str:
    cfg = {"state_dir": str(tmp_path / "st"), "store": f"{url}?namespace={ns}",
           "provider": {"simulated": {"time_scale": 0.01}},
           "distributed": {"failure_mode": "open"}, "tasks": tasks}
    name = f"run-{tasks[0]['id']}.yaml"
    (tmp_path / name).write_text(yaml.safe_dump(cfg))
    return name


def test_r2_6_a_run_ending_while_redis_is_down_exits_by_its_outcomes_and_the_spool_waits(
        tmp_path: Path, redis_ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """R2.6: every task completed, Redis down at the end: exit 0 (before: 2), one warning
    line with the spooled count; the next start applies the spool, and ``report`` shows
    the task's tokens once."""
    found = agents.discover_agents
    monkeypatch.setattr(agents, "discover_agents",
                        lambda: {**found(), "cuts": _CutsRedisBeforeItsLastCall})
    _SEEN.clear()
    with closing(TcpProxy()) as proxy:
        _CutsRedisBeforeItsLastCall.proxy = proxy
        first = _config(tmp_path, proxy.url, redis_ns,
                        [{"id": "c", "agent": "cuts", "prompt": "x"}])
        ran = cli(["run", first, "--no-live", "--log-level", "warning"], tmp_path)
        assert ran.code == 0, ran.stderr
        assert "error" not in ran.stderr.lower().split("redis_unavailable")[-1], ran.stderr
        pending = [json.loads(line) for line in ran.lines() if "redis_spool_pending" in line]
        assert len(pending) == 1, ran.stderr
        spool = tmp_path / "st" / "redis-spool.jsonl"
        waiting = len(spool.read_text().splitlines())
        assert pending[0]["pending"] == waiting > 0
        assert "next start" in pending[0]["message"]

        proxy.restore()
        second = _config(tmp_path, proxy.url, redis_ns,
                         [{"id": "d", "agent": "qa", "prompt": "What is a lease?"}])
        again = cli(["run", second, "--no-live", "--log-level", "warning"], tmp_path)
        assert again.code == 0, again.stderr
        assert spool.read_text() == ""  # applied at the start
        shown = cli(["report", "--state-dir", str(tmp_path / "st"), "--store",
                     f"{proxy.url}?namespace={redis_ns}",
                     "--json"], tmp_path)
    assert shown.code == 0, shown.stderr
    data = json.loads(shown.stdout)
    (cut,) = [row for row in data["by_agent"] if row["key"] == "cuts"]
    assert (cut["calls"], cut["tokens"]) == (2, _SEEN["tokens"])
