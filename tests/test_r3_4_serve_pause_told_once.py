"""R3.4 across ``serve`` replicas: a key's budget paused is told to people once per pause.

Two replicas on one SQLite file hold the same ``hold`` key's requests at its limit; with
no decision each held request is refused after ``max_hold_s`` and the next one is held
again.  Every replica announced every one of those pauses (a warning and a webhook
notification each, two replicas times one per ``max_hold_s``); the first is told, the
others are claimed as told in the store, as the fleet's budget warnings are.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler.control._webhooks import notification_of
from scheduler.core import Event
from tests._anthropic_helpers import fake_api
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

ROUNDS = 2


def _replica(tmp_path: Path, upstream: str, name: str) -> dict[str, Any]:
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A", "on_limit": "hold",
             "budget": {"tokens": 600}}]
    data = serve_config(tmp_path / name, upstream, keys, max_hold_s=0.5)
    return {**data, "store": f"sqlite:///{tmp_path / 'shared.db'}", "session_id": None}


async def _ask(client: anthropic.AsyncAnthropic, max_tokens: int) -> str:
    try:
        await client.messages.create(model="claude-haiku-4-5", max_tokens=max_tokens,
                                     messages=[{"role": "user", "content": "A prime?"}])
    except anthropic.BadRequestError:
        return "refused"
    return "ok"


@pytest.mark.real_asyncio  # real sockets, the fake API and one SQLite file
async def test_r3_4_a_shared_keys_pause_is_told_once_across_replicas_and_hold_timeouts(
    fake_api: FakeAnthropicServer, tmp_path: Path,
) -> None:
    paused: list[Event] = []
    async with serving(_replica(tmp_path, fake_api.base_url, "a")) as a, \
            serving(_replica(tmp_path, fake_api.base_url, "b")) as b:
        clients = []
        for run in (a, b):
            run.served.orchestrator.bus.subscribe(
                lambda e: paused.append(e) if e.name == "task_paused" else None)
            clients.append(anthropic.AsyncAnthropic(
                base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        assert await _ask(clients[0], 64) == "ok"
        for _ in range(ROUNDS):  # over the key's 600 tokens: held, refused at max_hold_s
            answers: list[str] = []
            async with anyio.create_task_group() as tg:
                for client in clients:
                    tg.start_soon(_held, client, answers)
            assert answers == ["refused", "refused"]
        for client in clients:
            await client.close()
    assert len(paused) == 2 * ROUNDS  # each replica still records each of its pauses
    told = Counter(e.level for e in paused if e.data.get("told", True))
    assert told == {"warning": 1}, [(e.level, e.data.get("told")) for e in paused]
    notifications = [n for e in paused if (n := notification_of(e)) is not None]
    assert len(notifications) == 1 and notifications[0].event == "task_paused"


async def _held(client: anthropic.AsyncAnthropic, answers: list[str]) -> None:
    answers.append(await _ask(client, 1000))
