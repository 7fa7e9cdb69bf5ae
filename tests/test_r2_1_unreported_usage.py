"""R2.1 / R1.5: an answer that reports no usage was billed all the same.  The call is
charged what it was admitted for -- its calibrated prompt estimate and all the output it
could have produced -- marked as an estimate (``<event id>:estimate``, as an open call
charged after a crash), with one ``usage_estimated`` warning naming the task and model.

The real SDK over real HTTP against the fake API, whose ``no_usage`` fault sends the
answer whole without ``usage`` (a body without it; a stream whose ``message_start`` and
``message_delta`` carry none): ``vibe-engine run`` with the ``anthropic`` provider, and
``vibe-engine serve`` forwarding plain and streamed requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer, Fault
from scheduler.core import UsageEvent
from scheduler.store import SqliteStore
from tests._anthropic_helpers import SECRET_KEY, as_usage, fake_api
from tests._serve_helpers import CLIENT_KEYS, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

BIN = Path(sys.executable).parent / "vibe-engine"
USER: Any = [{"role": "user", "content": "Explain the retry loop in two lines."}]


def _events(db: Path) -> list[UsageEvent]:
    async def read() -> list[UsageEvent]:
        store = SqliteStore(db)
        await store.open()
        try:
            return await store.events()
        finally:
            await store.aclose()

    return anyio.run(read)


def _check_estimated(event: UsageEvent, max_tokens: int, billed: int) -> None:
    assert event.event_id.endswith(":estimate")
    assert event.usage.completion_tokens == max_tokens  # all the output it could make
    assert event.usage.prompt_tokens > 0
    assert event.usage.total_tokens >= billed  # never less than the provider billed
    assert event.cost_usd > 0


def _run(fake_api: FakeAnthropicServer, tmp_path: Path, more_tasks: str = "") -> dict[str, str]:
    """``vibe-engine run`` (provider.kind = "anthropic", SQLite) of task q1 (qa) and
    ``more_tasks`` (TOML) against the fake API; the environment it ran with."""
    cfg = tmp_path / "vibe.toml"
    cfg.write_text(
        'state_dir = "st"\nstore = "sqlite"\n'
        f'[provider]\nkind = "anthropic"\nbase_url = "{fake_api.base_url}"\n'
        'api_key_env = "VIBE_TEST_KEY"\nmax_retries = 0\n'
        '[[tasks]]\nid = "q1"\nagent = "qa"\nprompt = "What does a lease do?"\n' + more_tasks)
    env = {**os.environ, "COLUMNS": "200", "VIBE_TEST_KEY": SECRET_KEY}
    out = subprocess.run([str(BIN), "run", str(cfg)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return env


@pytest.mark.slow
def test_r2_1_run_charges_an_answer_without_usage_at_its_estimate(
    fake_api: FakeAnthropicServer, tmp_path: Path,
) -> None:
    """``vibe-engine run`` (provider.kind = "anthropic"): q1's plain answer and c1's
    streamed one come without usage.  Before, each was charged 0 tokens and $0; now
    each is charged its estimate (800 and 64 output tokens, at least what the fake
    API billed), marked ``:estimate``, and ``report`` lists one warning per call."""
    fake_api.inject(Fault("no_usage"), times=2)
    env = _run(fake_api, tmp_path,
               '[[tasks]]\nid = "c1"\nagent = "coder"\nprompt = "Say hello."\n'
               'depends_on = ["q1"]\nparams = {stream = true, max_turns = 1, max_tokens = 64}\n')
    billed = [as_usage(r).total_tokens for r in fake_api.reported]
    assert [r.stream for r in fake_api.reported] == [False, True]
    events = {e.task_id: e for e in _events(tmp_path / "st" / "vibe.db")}
    assert sorted(events) == ["c1", "q1"]
    _check_estimated(events["q1"], 800, billed[0])
    _check_estimated(events["c1"], 64, billed[1])
    report = subprocess.run([str(BIN), "report", "--json", "--state-dir", "st"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["total"]["tokens"] == sum(e.usage.total_tokens for e in events.values())
    warned = [(a["task_id"], a["level"]) for a in doc["alerts"] if a["name"] == "usage_estimated"]
    assert sorted(warned) == [("c1", "warning"), ("q1", "warning")]
    assert all("sonnet" in a["message"] or "haiku" in a["message"] or "opus" in a["message"]
               for a in doc["alerts"] if a["name"] == "usage_estimated")


@pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, the fake API
async def test_r2_1_serve_charges_forwarded_answers_without_usage_at_their_estimate(
    fake_api: FakeAnthropicServer, tmp_path: Path,
) -> None:
    """``vibe-engine serve``: a plain and a streamed answer of the upstream without usage
    reach the client as sent.  Before, the key was charged 0 tokens for both; now each
    call is charged its estimate (all 100 output tokens it asked for, at least what the
    upstream billed), marked ``:estimate``, with a warning naming the key and model."""
    fake_api.inject(Fault("no_usage"), times=2)
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A"}]
    async with (serving(serve_config(tmp_path, fake_api.base_url, keys)) as run,
                AsyncExitStack() as stack):
        client = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0))
        plain = await client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                             messages=USER)
        assert plain.content[0].type == "text"
        streamed: Any = await client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                                messages=USER, stream=True)
        kinds = [event.type async for event in streamed]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        totals = await run.settled("alpha", 2)
        orch = run.served.orchestrator
        events = await orch.store.events(task_id="alpha")
        warned = [e for e in orch.bus.history if e.name == "usage_estimated"]
    billed = [as_usage(r).total_tokens for r in fake_api.reported]
    assert len(events) == 2 and totals.completion_tokens == 200
    for event, paid in zip(events, billed, strict=True):
        _check_estimated(event, 100, paid)
    assert totals.tokens == sum(e.usage.total_tokens for e in events)
    assert [(e.task_id, e.level, e.data["model"]) for e in warned] == [
        ("alpha", "warning", "sonnet")] * 2


@pytest.mark.slow
def test_r2_1_run_charges_an_answer_with_nonsense_usage_at_its_estimate(
    fake_api: FakeAnthropicServer, tmp_path: Path,
) -> None:
    """An answer whose usage is no count (a negative input, as a server that is not the
    API may send) was charged as reported: the ledger refused the negative amount, so the
    paid call was lost and its task failed.  It is charged its estimate, and completes."""
    fake_api.load_script([{"content": [{"type": "text", "text": "A lease is a turn."}],
                           "usage": {"input_tokens": -5, "output_tokens": 7}}])
    _run(fake_api, tmp_path)
    (event,) = _events(tmp_path / "st" / "vibe.db")
    _check_estimated(event, 800, 7)
