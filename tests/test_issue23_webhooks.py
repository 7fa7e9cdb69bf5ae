"""#23 alerts that reach people: the ``notify`` action (R3.3) and paused tasks (R3.4) are
posted to configured webhooks — retried with backoff, never blocking an agent, never
carrying secrets — and a paused task's notification says how to decide."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from scheduler import ConfigError, config_from_dict
from scheduler.config import AlertsConfig
from scheduler.control import Notification
from scheduler.control._webhooks import WebhookSender, notification_of
from scheduler.core import Event
from scheduler.runtime import Orchestrator
from tests._observe_helpers import demo_orchestrator

SECRET = "s3cr3t-header-value"


class Recorder(BaseHTTPRequestHandler):
    """Records JSON posts; paths starting ``/flaky`` answer 500 to the first two posts."""

    posts: list[tuple[str, dict[str, str], Any]] = []
    failures: dict[str, int] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        failed = Recorder.failures.get(self.path, 0)
        if self.path.startswith("/flaky") and failed < 2:
            Recorder.failures[self.path] = failed + 1
            self.send_response(500)
        else:
            Recorder.posts.append((self.path, dict(self.headers), body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.posts, Recorder.failures = [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _staged(tmp_path: Path, webhooks: list[dict[str, Any]]) -> Orchestrator:
    # low thresholds: the tight task crosses "critical" on a call before it exceeds
    alerts = {"decision_timeout_s": 3.0, "webhooks": webhooks, "webhook_backoff_s": 0.05,
              "warning": 0.1, "critical": 0.2}
    return demo_orchestrator(tmp_path, tasks=4, time_scale=0.002, staged=True, alerts=alerts)


@pytest.mark.real_asyncio
async def test_r3_3_r3_4_issue23_notify_and_pause_reach_webhooks(
        server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """R3.3/R3.4 #23: a staged demo run (a critical alert, a paused task) posts to a JSON
    webhook (a header from the environment) and to a Slack webhook that fails twice
    first; the pause says how to decide; nothing secret is in a body or a log line."""
    monkeypatch.setenv("VIBE_TEST_HOOK_TOKEN", SECRET)
    monkeypatch.setenv("VIBE_TEST_SLACK_URL", f"{server}/flaky/T000/B000/xyz")
    orch = _staged(tmp_path, [
        {"url": f"{server}/json", "headers": {"Authorization": "VIBE_TEST_HOOK_TOKEN"}},
        {"url_env": "VIBE_TEST_SLACK_URL", "format": "slack"},
    ])
    await orch.run()
    assert orch.parts.webhooks is not None
    json_posts = [b for p, _, b in Recorder.posts if p == "/json"]
    slack_posts = [b for p, _, b in Recorder.posts if p.startswith("/flaky")]
    events = [b["event"] for b in json_posts]
    assert "task_paused" in events and "budget_critical" in events
    critical = next(b for b in json_posts if b["event"] == "budget_critical")
    assert {"tokens_left", "cost_left_usd", "percent", "scope"} <= set(critical)  # R3.3
    paused = next(b for b in json_posts if b["event"] == "task_paused")
    task = paused["task_id"]
    state = orch.config.state_dir
    add, finish, review = paused["decide"]  # the commands the live view and status offer
    assert re.fullmatch(rf"vibe-engine decide --state-dir {re.escape(str(state))} "
                        rf"{task} add --tokens \d+", add), add
    assert finish == f"vibe-engine decide --state-dir {state} {task} finish"
    assert review == f"vibe-engine decide --state-dir {state} {task} review"
    # the Slack endpoint failed twice and still got every notification, in Slack's shape
    assert len(slack_posts) == len(json_posts)
    assert all(set(b) == {"text"} for b in slack_posts)
    assert any(finish in b["text"] for b in slack_posts)
    stats = [s.stats for s in orch.parts.webhooks.senders]
    assert stats[1].retries == 2 and stats[1].failed == 0 and stats[0].dropped == 0
    # the header reached the endpoint; no secret is in a body or in what was logged
    assert all(h.get("Authorization") == SECRET for p, h, _ in Recorder.posts if p == "/json")
    fields = set(Notification.__dataclass_fields__) | {"source"}
    assert all(set(b) <= fields for b in json_posts)
    bodies = json.dumps([b for _, _, b in Recorder.posts])
    prompts = [str(t.params.get("prompt", "")) for t in orch.config.tasks]
    assert SECRET not in bodies and "xyz" not in bodies
    assert not any(p and p in bodies for p in prompts)
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "/B000/xyz" not in out.out + out.err


def _config(**kw: Any) -> AlertsConfig:
    return AlertsConfig.model_validate({"webhooks": [{"url": "http://hook.invalid/x"}], **kw})


def _note(i: int = 0) -> Notification:
    return Notification("budget_critical", f"t{i}", "critical", f"budget at 90 % ({i})")


async def test_issue23_retries_back_off_on_virtual_time() -> None:
    """#23: a failing endpoint is retried after 1, 2 and 4 s (exponential backoff on the
    loop's clock), then the notification is delivered; a 404 is not retried."""
    answers = iter([503, 500, 502, 200, 404])
    seen: list[float] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(anyio.current_time())
        return httpx2.Response(next(answers))

    sender = WebhookSender("http://hook.invalid/x", "json", {}, _config())
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
        start = anyio.current_time()
        assert await sender._deliver(client, _note(), 5)
        assert [round(t - start, 3) for t in seen] == [0, 1, 3, 7]
        assert not await sender._deliver(client, _note(), 5)  # 404: given up at once
    assert len(seen) == 5
    assert (sender.stats.sent, sender.stats.failed, sender.stats.retries) == (1, 1, 3)


async def test_issue23_full_queue_drops_the_oldest_and_never_blocks() -> None:
    """#23: submitting never waits (an agent's alert path); past ``webhook_queue`` the oldest
    notifications are dropped and counted, and the newest are delivered."""
    delivered: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        delivered.append(json.loads(request.content)["task_id"])
        return httpx2.Response(204)

    sender = WebhookSender("http://hook.invalid/x", "json", {}, _config(webhook_queue=3))
    start = anyio.current_time()
    for i in range(7):
        sender.submit(_note(i))
    assert anyio.current_time() == start and sender.pending == 3
    assert sender.stats.dropped == 4
    async with (httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client,
                anyio.create_task_group() as tg):
        tg.start_soon(sender.run, client)
        await anyio.sleep(1)
        sender.submit(_note(9))
        await anyio.sleep(1)
        tg.cancel_scope.cancel()
    assert delivered == ["t4", "t5", "t6", "t9"]


def test_issue23_only_notify_actions_and_pauses_are_posted() -> None:
    """A warning (no notify action) posts nothing; a critical one does, without its raw data."""
    warning = Event("budget_warning", 0.0, "budget at 70 %", task_id="t1",
                    data={"actions": ["log", "indicator"]})
    critical = Event("budget_critical", 0.0, "budget at 90 %", task_id="t1",
                     data={"actions": ["notify"], "percent": 90, "tokens_left": 10,
                           "prompt": "secret prompt", "scope": "task:t1"})
    assert notification_of(warning) is None
    note = notification_of(critical)
    assert note is not None and note.percent == 90 and note.tokens_left == 10
    assert "secret prompt" not in json.dumps(note.to_json())


def test_issue23_webhook_config_errors_name_the_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input: one clear error naming the field; a missing environment variable stops
    the run before it starts."""
    with pytest.raises(ConfigError, match="url"):
        config_from_dict({"alerts": {"webhooks": [{"format": "json"}]}})
    with pytest.raises(ConfigError, match="url"):
        config_from_dict({"alerts": {"webhooks": [{"url": "ftp://x"}]}})
    with pytest.raises(ConfigError, match="format"):
        config_from_dict({"alerts": {"webhooks": [{"url": "http://x", "format": "xml"}]}})
    monkeypatch.delenv("VIBE_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError, match=r"alerts\.webhooks\[0\]\.headers\.X-Token"):
        _staged(tmp_path, [{"url": "http://127.0.0.1:9/x",
                            "headers": {"X-Token": "VIBE_TEST_MISSING"}}])
