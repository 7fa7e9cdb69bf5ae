"""Two ``vibe-engine serve`` processes on one Redis share a key's budget (R1.2, #21): the
key's spend over both stays within its budget plus one call's grace per process."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from tests._anthropic_helpers import SECRET_KEY, fake_api
from tests._redis_helpers import REDIS_URL
from tests._serve_helpers import CLIENT_KEYS, serve_process

__all__ = ["fake_api"]  # the fixture, imported for pytest

BUDGET = 3000
MAX_TOKENS = 200
#: Calls in flight per process: each holds its estimate (prompt + max_tokens) until it
#: settles, so a refusal leaves at most this many estimates of the budget unused.
PARALLEL = 2


def _config(tmp_path: Path, name: str, upstream: str, ns: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
state_dir = "{tmp_path / name}"
store = "{REDIS_URL}?namespace={ns}"

[serve]
upstream_base_url = "{upstream}"
upstream_key_env = "UPSTREAM_KEY"

[[serve.keys]]
name = "shared"
key_env = "VIBE_KEY_A"
on_limit = "reject"
budget = {{ tokens = {BUDGET} }}
""")
    return path


@pytest.mark.slow
@pytest.mark.real_asyncio  # two server processes, Redis and the fake API over sockets
async def test_r1_2_two_serve_processes_on_redis_share_a_key_budget(
    fake_api: FakeAnthropicServer, tmp_path: Path, redis_ns: str
) -> None:
    """R1.2 across processes (#21): both replicas admit against the key's one budget in
    Redis; all they let through together stays within budget + one call per process,
    and no more than the budget's worth is refused short (the budget is really used)."""
    env = {"UPSTREAM_KEY": SECRET_KEY, **CLIENT_KEYS}
    with (serve_process(_config(tmp_path, "a", fake_api.base_url, redis_ns), tmp_path, env)
          as url_a,
          serve_process(_config(tmp_path, "b", fake_api.base_url, redis_ns), tmp_path, env)
          as url_b):
        outcomes: list[str] = []
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(anthropic.AsyncAnthropic(
                base_url=u, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
                for u in (url_a, url_b)]

            async def calls(client: anthropic.AsyncAnthropic) -> None:
                """Call until refused, as an agent would."""
                while True:
                    try:
                        await client.messages.create(
                            model="claude-haiku-4-5", max_tokens=MAX_TOKENS,
                            messages=[{"role": "user", "content": "Name one prime."}])
                        outcomes.append("ok")
                    except anthropic.BadRequestError as exc:
                        assert "task:shared tokens" in str(exc)
                        outcomes.append("refused")
                        return

            async with anyio.create_task_group() as tg:
                for _ in range(PARALLEL):
                    for client in clients:
                        tg.start_soon(calls, client)
    reported = fake_api.reported
    spent = sum(r.input_tokens + r.output_tokens for r in reported)
    one_call = max(r.input_tokens for r in reported) + MAX_TOKENS
    assert outcomes.count("ok") == len(reported)
    assert "refused" in outcomes
    assert spent <= BUDGET + 2 * one_call, (spent, outcomes.count("ok"))
    # a replica did not stop at its own share: the budget was used up to the calls in flight
    assert spent >= BUDGET - 2 * PARALLEL * one_call, spent
