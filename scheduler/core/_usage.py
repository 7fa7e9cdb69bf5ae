"""Usage events, totals and cache-aware cost (R2.1, R2.4).

Pure data and pure functions: nothing here performs I/O or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.core._frozen import maker

_MTOK = 1_000_000.0


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one model call, as the provider reports them.

    ``prompt_tokens`` are uncached input tokens; cache reads and the two kinds
    of cache writes (5-minute and 1-hour) are counted separately (R2.4).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def total_tokens(self) -> int:
        return (
            self.prompt_tokens
            + self.completion_tokens
            + self.cache_read_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_5m_tokens + other.cache_write_5m_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
        )


class Prices(Protocol):
    """A model's prices (``scheduler.config.ModelSpec`` is one): USD per million tokens."""

    @property
    def input_usd_per_mtok(self) -> float: ...
    @property
    def output_usd_per_mtok(self) -> float: ...
    @property
    def cache_read_multiplier(self) -> float: ...
    @property
    def cache_write_5m_multiplier(self) -> float: ...
    @property
    def cache_write_1h_multiplier(self) -> float: ...


def cost_usd(usage: Usage, spec: Prices) -> float:
    """Cache-aware cost: reads at ``cache_read_multiplier`` (0.1×), writes at 1.25×/2×."""
    inp = spec.input_usd_per_mtok / _MTOK
    out = spec.output_usd_per_mtok / _MTOK
    return (
        usage.prompt_tokens * inp
        + usage.completion_tokens * out
        + usage.cache_read_tokens * inp * spec.cache_read_multiplier
        + usage.cache_write_5m_tokens * inp * spec.cache_write_5m_multiplier
        + usage.cache_write_1h_tokens * inp * spec.cache_write_1h_multiplier
    )


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One charge: a model call's tokens and cost, or counted operations.

    ``event_id`` is the idempotency key: recording the same id twice charges
    once. ``day`` is the calendar day (``YYYY-MM-DD``) the event counts toward;
    ``at`` is wall-clock seconds since the epoch (for reports only).
    """

    event_id: str
    task_id: str
    session_id: str
    day: str
    at: float
    agent: str = ""
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    file_edits: int = 0
    shell_commands: int = 0
    dangerous_commands: int = 0
    task_type: str = ""
    #: The task whose per-day budget this event also counts toward (a ``serve`` key with a
    #: ``day_budget``, for its own calls and its grouped tasks'); "" for none.  The stores
    #: keep that scope's totals (``task-day:TASK:DAY``), not this field in the event log.
    day_scope: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "task_id": self.task_id,
            "session_id": self.session_id,
            "day": self.day,
            "at": self.at,
            "agent": self.agent,
            "model": self.model,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "cache_write_5m_tokens": self.usage.cache_write_5m_tokens,
            "cache_write_1h_tokens": self.usage.cache_write_1h_tokens,
            "cost_usd": self.cost_usd,
            "file_edits": self.file_edits,
            "shell_commands": self.shell_commands,
            "dangerous_commands": self.dangerous_commands,
            "task_type": self.task_type,
        }
        if self.day_scope:
            d["day_scope"] = self.day_scope
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UsageEvent:
        return cls(
            event_id=str(d["event_id"]),
            task_id=str(d["task_id"]),
            session_id=str(d["session_id"]),
            day=str(d["day"]),
            at=float(d["at"]),
            agent=str(d.get("agent", "")),
            model=str(d.get("model", "")),
            usage=Usage(
                int(d.get("prompt_tokens", 0)),
                int(d.get("completion_tokens", 0)),
                int(d.get("cache_read_tokens", 0)),
                int(d.get("cache_write_5m_tokens", 0)),
                int(d.get("cache_write_1h_tokens", 0)),
            ),
            cost_usd=float(d.get("cost_usd", 0.0)),
            file_edits=int(d.get("file_edits", 0)),
            shell_commands=int(d.get("shell_commands", 0)),
            dangerous_commands=int(d.get("dangerous_commands", 0)),
            task_type=str(d.get("task_type", "")),
            day_scope=str(d.get("day_scope", "")),
        )


#: ``UsageEvent(*every field in order)`` at about half the cost (see ``_frozen``): every
#: settled model call makes one.
make_usage_event = maker(UsageEvent)


@dataclass(slots=True)
class Totals:
    """Running totals of one scope (mutable; stores hand out copies)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    file_edits: int = 0
    shell_commands: int = 0
    dangerous_commands: int = 0
    calls: int = 0
    tokens_by_model: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return (
            self.prompt_tokens
            + self.completion_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
        )

    def add(self, event: UsageEvent) -> None:
        # the usage's fields read once each (no property frames): every charge adds to
        # each of its scopes' totals
        u = event.usage
        prompt, out, read = u.prompt_tokens, u.completion_tokens, u.cache_read_tokens
        write = u.cache_write_5m_tokens + u.cache_write_1h_tokens
        self.prompt_tokens += prompt
        self.completion_tokens += out
        self.cache_read_tokens += read
        self.cache_write_tokens += write
        self.cost_usd += event.cost_usd
        self.file_edits += event.file_edits
        self.shell_commands += event.shell_commands
        self.dangerous_commands += event.dangerous_commands
        model = event.model
        if model:
            self.calls += 1
            by_model = self.tokens_by_model
            by_model[model] = by_model.get(model, 0) + prompt + out + read + write

    def remove(self, event: UsageEvent) -> None:
        """Take back an event :meth:`add` added (an estimate its call's actual usage
        replaced, see ``scheduler/budget/_open_calls.py``)."""
        u = event.usage
        self.prompt_tokens -= u.prompt_tokens
        self.completion_tokens -= u.completion_tokens
        self.cache_read_tokens -= u.cache_read_tokens
        self.cache_write_tokens -= u.cache_write_tokens
        self.cost_usd -= event.cost_usd
        self.file_edits -= event.file_edits
        self.shell_commands -= event.shell_commands
        self.dangerous_commands -= event.dangerous_commands
        if event.model:
            self.calls -= 1
            by_model = self.tokens_by_model
            by_model[event.model] = by_model.get(event.model, 0) - u.total_tokens

    def merge(self, other: Totals) -> None:
        """Add another scope's totals to these."""
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cost_usd += other.cost_usd
        self.file_edits += other.file_edits
        self.shell_commands += other.shell_commands
        self.dangerous_commands += other.dangerous_commands
        self.calls += other.calls
        for model, n in other.tokens_by_model.items():
            self.tokens_by_model[model] = self.tokens_by_model.get(model, 0) + n

    def copy(self) -> Totals:
        # positional, not ``dataclasses.replace`` (several times slower): a shared budget
        # ledger hands out a copy per scope for every model call
        return Totals(self.prompt_tokens, self.completion_tokens, self.cache_read_tokens,
                      self.cache_write_tokens, self.cost_usd, self.file_edits,
                      self.shell_commands, self.dangerous_commands, self.calls,
                      dict(self.tokens_by_model))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "file_edits": self.file_edits,
            "shell_commands": self.shell_commands,
            "dangerous_commands": self.dangerous_commands,
            "calls": self.calls,
            "tokens_by_model": dict(self.tokens_by_model),
        }
