"""``docs/examples/serve.toml`` runs as it is (#21): ``vibe-engine serve`` forwards to the
fake API, accepts the client key from ``VIBE_CLIENT_KEY``, and an SDK call through it
shows up in ``vibe-engine status --json`` under that key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler.config import load_config
from tests._anthropic_helpers import fake_api
from tests._serve_helpers import BIN, ROOT, serve_process

__all__ = ["fake_api"]  # the fixture, imported for pytest

EXAMPLE = ROOT / "docs" / "examples" / "serve.toml"
FAKE_API_DEFAULT = "http://127.0.0.1:8765"  # `vibe-engine fake-api` without --port


async def _status_after_settle(cwd: Path) -> dict[str, Any]:
    """``status --json`` once the running serve's ``status.json`` (rewritten at most once a
    second) shows the key's call; the last one read after 15 s otherwise."""
    with anyio.move_on_after(15):
        while True:
            done = await anyio.run_process([str(BIN), "status", "--json"], cwd=cwd)
            status: dict[str, Any] = json.loads(done.stdout)
            if any(t["task_id"] == "my-agent" and t["calls"] for t in status["tasks"]):
                return status
            await anyio.sleep(0.2)
    return status


@pytest.mark.slow
@pytest.mark.real_asyncio  # a server process and sockets
async def test_21_example_config_serves_and_status_shows_the_key(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """#21 acceptance: the example, changed only in the fake API's port (the test's fake
    API listens on a free one), serves an SDK call that status reports under its key."""
    assert load_config(EXAMPLE).serve.upstream_base_url == FAKE_API_DEFAULT
    config = tmp_path / "serve.toml"
    config.write_text(EXAMPLE.read_text().replace(FAKE_API_DEFAULT, fake_api.base_url))
    fake_api.configure(api_key=None)  # the example sends no upstream key: the fake needs none
    env = {"VIBE_CLIENT_KEY": "sk-example-client"}
    with serve_process(config, tmp_path, env) as url:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-example-client",
                                            max_retries=0) as client:
            reply = await client.messages.create(
                model="claude-sonnet-4-6", max_tokens=64,
                messages=[{"role": "user", "content": "Say hello."}])
        status = await _status_after_settle(tmp_path)
    report = json.loads((await anyio.run_process([str(BIN), "report", "--json"],
                                                 cwd=tmp_path)).stdout)
    assert "serve:my-agent" in json.dumps(report)  # the per-agent table: per key
    row = next(t for t in status["tasks"] if t["task_id"] == "my-agent")
    assert row["calls"] == 1 and row["status"] == "running"
    assert row["tokens"] == reply.usage.input_tokens + reply.usage.output_tokens
    assert row["agent"] == "serve:my-agent"
