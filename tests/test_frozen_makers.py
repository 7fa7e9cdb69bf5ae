"""R2.1: the records every governed call makes -- its usage event, its provider request --
made field by field without ``object.__setattr__`` (``scheduler/core/_frozen.py``) are the
objects the classes make: equal, hashed alike, frozen, and each field where it belongs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import pytest

from scheduler import TaskSpec, Usage, VibeConfig
from scheduler.budget import resolve_task
from scheduler.core import CompletionRequest, UsageEvent
from scheduler.core._frozen import maker
from scheduler.core._provider import make_completion_request
from scheduler.core._usage import make_usage_event
from scheduler.runtime._call import Call, Route, attempt_request
from scheduler.store import MemoryStore
from scheduler.tasks import TaskHandle
from tests._helpers import tracker_with_task


def _distinct(cls: type) -> list[object]:
    """A value of its own for each field of ``cls`` (a swapped pair of fields shows)."""
    return [f"{f.name}-value" if "str" in str(f.type) else object() for f in fields(cls)]


@pytest.mark.parametrize(("cls", "make"), [(UsageEvent, make_usage_event),
                                           (CompletionRequest, make_completion_request)])
def test_r2_1_a_made_record_is_the_classs_own(cls: type[Any],
                                               make: Callable[..., Any]) -> None:
    values = _distinct(cls)
    made, plain = make(*values), cls(*values)
    assert type(made) is cls and made == plain
    assert [getattr(made, f.name) for f in fields(cls)] == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.model = "other"


def test_r2_1_a_made_usage_event_hashes_as_the_classs_own() -> None:
    values = ["e", "t", "s", "2026-11-27", 1.5, "a", "haiku", Usage(1, 2), 0.25, 1, 2, 3,
              "bug_fix", "t"]
    assert hash(make_usage_event(*values)) == hash(UsageEvent(*values))  # type: ignore[arg-type]


def test_maker_refuses_what_it_cannot_make_alike() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    for cls in (Mutable, Checked, NoSlots):
        with pytest.raises(TypeError):
            maker(cls)


@pytest.mark.anyio
async def test_r2_1_make_event_puts_each_field_in_its_place() -> None:
    """R2.1: the tracker's usage event (made positionally) names each value as asked."""
    tr = await tracker_with_task(MemoryStore())
    usage = Usage(7, 11, 13, 17, 19)
    event = tr.make_event("t1", model="haiku", usage=usage, cost_usd=0.5, file_edits=2,
                          shell_commands=3, dangerous_commands=4, event_id="ev-1",
                          day="2026-11-28")
    assert (event.event_id, event.task_id, event.session_id, event.day, event.agent,
            event.model, event.usage, event.cost_usd, event.file_edits, event.shell_commands,
            event.dangerous_commands, event.task_type, event.day_scope) == (
        "ev-1", "t1", "s1", "2026-11-28", "coder", "haiku", usage, 0.5, 2, 3, 4,
        tr._scopes.tasks["t1"].profile.task_type, "")
    assert isinstance(event.at, float) and event.at > 0


def test_r2_1_attempt_request_puts_each_field_in_its_place() -> None:
    config = VibeConfig()
    spec = TaskSpec(id="t1", agent="coder", prompt="Fix the bug")
    task = TaskHandle(spec, resolve_task(spec, config))
    messages = [{"role": "user", "content": "hi"}]
    tools = ({"name": "run"},)
    hints, options = {"difficulty": 0.5}, {"temperature": 0.2}

    def sink(text: str) -> None:
        pass

    call = Call(333, 333, True, hints, options, sink, None, task, messages, "sys", "ctx",
                tools, 5, 0)
    request = attempt_request(config, task, Route("haiku", "why", None), messages, "sys",
                              "ctx", tools, call)
    assert request == CompletionRequest(
        model="haiku", model_id=config.model_spec("haiku").model_id, messages=messages,
        system="sys\n\nctx", tools=tools, max_tokens=333, stream=True, task_id="t1",
        hints=hints, options=options, on_text=sink, passthrough=None)
