"""Alerts that reach people: the ``notify`` action and paused tasks, posted to webhooks.

:class:`Webhooks` subscribes to the event bus and turns two kinds of event into a
:class:`Notification`: a budget crossing whose alert actions include ``notify``
(R3.3, the critical alert by default) and ``task_paused`` (R3.4, with the
commands that answer it).  Each configured webhook has its own
:class:`WebhookSender`: a bounded queue that a background service empties, so a
slow or dead endpoint never blocks an agent — the bus callback only appends
(when the queue is full the oldest notification is dropped, counted and logged).
A failed post (connection error, timeout, 429 or 5xx) is retried with exponential
backoff through ``anyio.sleep``; other 4xx answers are not retried.

Nothing secret leaves: a notification carries only the fields listed in
:class:`Notification` (ids, levels, figures and the policy's message — never a
prompt, an API key or the event's raw data); header values and the URL are read
from the environment and never logged (logs name the webhook's host only).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2

from scheduler.config import AlertsConfig, api_key_problem, base_url_problem
from scheduler.control._answer import decide_commands
from scheduler.core import ConfigError, Event, get_logger

__all__ = ["Notification", "WebhookSender", "Webhooks", "notification_of"]

_log = get_logger("vibe_engine.webhooks")

DEFAULT_STATE_DIR = Path(".vibe-engine")
MAX_BACKOFF_S = 60.0
_RETRY_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Notification:
    """What one webhook post says (plain data; the only fields that ever leave)."""

    event: str
    task_id: str
    level: str
    message: str
    session_id: str = ""
    scope: str = ""
    dimension: str = ""
    used: float | None = None
    limit: float | None = None
    percent: int | None = None
    tokens_left: int | None = None
    cost_left_usd: float | None = None
    tokens_used: int | None = None
    cost_used_usd: float | None = None
    #: The commands that answer a paused task (R3.4).
    decide: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, "", ())}
        out["source"] = "vibe-engine"
        return out

    def to_slack(self) -> dict[str, Any]:
        """A Slack-compatible body (incoming webhooks read ``text``; mrkdwn)."""
        icon = {"critical": ":warning:", "exceeded": ":octagonal_sign:"}.get(self.level,
                                                                           ":bell:")
        lines = [f"{icon} *vibe-engine* — task `{self.task_id}`: {self.message}"]
        if self.decide:
            lines.append("Decide with one of:")
            lines.extend(f"• `{cmd}`" for cmd in self.decide)
        return {"text": "\n".join(lines)}

    def body(self, fmt: str) -> dict[str, Any]:
        return self.to_slack() if fmt == "slack" else self.to_json()


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: Any) -> int | None:
    return round(value) if isinstance(value, int | float) else None


def notification_of(event: Event, *, session_id: str = "",
                    state_dir: Path = DEFAULT_STATE_DIR) -> Notification | None:
    """The notification an event asks for, or ``None`` (most events ask for none)."""
    d, task = event.data, event.task_id or ""
    if event.name.startswith("budget_") and "notify" in d.get("actions", ()):
        left = d.get("tokens_left")
        return Notification(
            event.name, task, event.name.removeprefix("budget_"), event.message, session_id,
            str(d.get("scope", "")), str(d.get("dimension", "")), _num(d.get("used")),
            _num(d.get("limit")), _int(d.get("percent")), _int(left),
            _num(d.get("cost_left")))
    if event.name == "task_paused" and d.get("told", True):
        usage = d.get("usage") or {}
        return Notification(
            event.name, task, "exceeded", event.message, session_id,
            tokens_used=_int(usage.get("tokens")),
            cost_used_usd=_num(usage.get("cost_usd")),
            decide=decide_commands(task, str(d.get("dimension") or "tokens"),
                                   _num(d.get("used")) or 0.0, _num(d.get("limit")) or 0.0,
                                   state_dir))
    return None


@dataclass(slots=True)
class SenderStatistics:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0


class WebhookSender:
    """One webhook: a bounded drop-oldest queue and the loop that posts from it."""

    def __init__(self, url: str, fmt: str, headers: Mapping[str, str], config: AlertsConfig,
                 *, name: str = "") -> None:
        # as `vibe-engine run` refuses at start: every notification would fail (a webhook
        # URL and header values may be secrets: they are not repeated)
        _check("url", "<redacted>", base_url_problem(url))
        for header, value in headers.items():
            _check(f"headers.{header}", "<redacted>", api_key_problem(value))
        self.url = url
        self.format = fmt
        self.headers = dict(headers)
        self.config = config
        #: For logs: the host only (a webhook URL may itself be a secret).
        self.name = name or (urlsplit(url).hostname or "webhook")
        self.stats = SenderStatistics()
        self._queue: deque[Notification] = deque()
        self._wake: anyio.Event | None = None  # made in the event loop (run)

    def submit(self, note: Notification) -> None:
        """Queue ``note`` (never blocks; the oldest goes when the queue is full)."""
        if len(self._queue) >= self.config.webhook_queue:
            self._queue.popleft()
            self.stats.dropped += 1
            _log.warning("webhook_queue_full", webhook=self.name, dropped=self.stats.dropped)
        self._queue.append(note)
        if self._wake is not None:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def run(self, client: httpx2.AsyncClient) -> None:
        try:
            while True:
                while self._queue:
                    await self._deliver(client, self._queue.popleft(),
                                        self.config.webhook_attempts)
                self._wake = anyio.Event()
                await self._wake.wait()
        finally:
            # the run is ending: one quick try for what is still queued
            with anyio.CancelScope(shield=True), anyio.move_on_after(
                    self.config.webhook_timeout_s):
                while self._queue:
                    await self._deliver(client, self._queue.popleft(), 1)

    async def _deliver(self, client: httpx2.AsyncClient, note: Notification,
                       attempts: int) -> bool:
        for attempt in range(1, attempts + 1):
            retry, why = await self._post(client, note)
            if not retry and not why:
                self.stats.sent += 1
                return True
            if not retry or attempt == attempts:
                break
            self.stats.retries += 1
            await anyio.sleep(min(self.config.webhook_backoff_s * 2 ** (attempt - 1),
                                  MAX_BACKOFF_S))
        self.stats.failed += 1
        _log.warning("webhook_failed", webhook=self.name, notification=note.event,
                     task_id=note.task_id, reason=why, attempts=attempt)
        return False

    async def _post(self, client: httpx2.AsyncClient, note: Notification) -> tuple[bool, str]:
        """``(retry, reason)``: ``(False, "")`` when delivered."""
        try:
            resp = await client.post(self.url, json=note.body(self.format),
                                     headers=self.headers,
                                     timeout=self.config.webhook_timeout_s)
        except httpx2.HTTPError as exc:
            return True, type(exc).__name__
        if resp.is_success:
            return False, ""
        code = resp.status_code
        return code >= 500 or code in _RETRY_STATUS, f"HTTP {code}"


def _check(field_name: str, value: str, problem: str | None) -> None:
    if problem is not None:
        raise ConfigError(field_name, value, problem)


def _from_env(env: Mapping[str, str], field_name: str, var: str) -> str:
    value = env.get(var)
    if not value:
        raise ConfigError(field_name, var, "environment variable is not set")
    return value


class Webhooks:
    """Every configured webhook, fed from the event bus (see the module docstring)."""

    def __init__(self, senders: Sequence[WebhookSender], *, session_id: str = "",
                 state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.senders = list(senders)
        self.session_id = session_id
        self.state_dir = state_dir

    @classmethod
    def from_config(cls, config: AlertsConfig, *, session_id: str = "",
                    state_dir: Path = DEFAULT_STATE_DIR,
                    env: Mapping[str, str] | None = None) -> Webhooks:
        """Read URLs and header values from the environment now: a missing variable stops
        the run before it starts, naming the field."""
        env = os.environ if env is None else env
        senders = []
        for i, hook in enumerate(config.webhooks):
            where = f"alerts.webhooks[{i}]"
            url = hook.url or _from_env(env, f"{where}.url_env", hook.url_env or "")
            if hook.url is None:  # named as the CLI names it: the variable, not its value
                _check(f"{where}.url_env", hook.url_env or "", base_url_problem(url))
            headers = {name: _from_env(env, f"{where}.headers.{name}", var)
                       for name, var in hook.headers.items()}
            for name, var in hook.headers.items():
                _check(f"{where}.headers.{name}", var, api_key_problem(headers[name]))
            senders.append(WebhookSender(url, hook.format, headers, config))
        return cls(senders, session_id=session_id, state_dir=state_dir)

    def on_event(self, event: Event) -> None:
        """The bus subscriber: queue a notification for every webhook (never blocks)."""
        note = notification_of(event, session_id=self.session_id, state_dir=self.state_dir)
        if note is not None:
            for sender in self.senders:
                sender.submit(note)

    async def run(self) -> None:
        """The background service: each webhook's sender, over one HTTP client."""
        async with httpx2.AsyncClient() as client, anyio.create_task_group() as tg:
            for sender in self.senders:
                tg.start_soon(sender.run, client)

