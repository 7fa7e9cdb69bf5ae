"""Estimation before the call and reconciliation after it (R2.2, R2.3), cost (R2.4)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from scheduler import ModelSpec, Usage
from scheduler.budget import TokenCounter
from scheduler.core import cost_usd

TOOLS = [
    {"name": f"tool_{i}", "description": "Reads a file from the workspace " * 3,
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}
    for i in range(10)
]


def test_r2_2_estimate_counts_system_context_messages_and_tools() -> None:
    """R2.2: the system prompt, injected context, the messages and tool definitions all count."""
    tc = TokenCounter()
    msgs = [{"role": "user", "content": "hello world"}]
    base = tc.count_prompt(msgs)
    with_system = tc.count_prompt(msgs, system="You are a helpful assistant.")
    with_context = tc.count_prompt(msgs, system="You are a helpful assistant.",
                                   context="File a.py: def f(): pass")
    with_tools = tc.count_prompt(msgs, system="You are a helpful assistant.",
                                 context="File a.py: def f(): pass", tools=TOOLS)
    assert base < with_system < with_context < with_tools
    assert tc.count_text("hello world") == 2  # cl100k_base, loaded offline


def test_r2_2_block_content_is_counted() -> None:
    """R2.2: list-of-blocks message content (text and tool results) is counted."""
    tc = TokenCounter()
    blocks = [{"role": "user", "content": [{"type": "text", "text": "hello world"},
                                           {"type": "tool_result", "content": "42"}]}]
    assert tc.count_prompt(blocks) > tc.count_prompt([{"role": "user", "content": "hello world"}])


def test_r2_2_repeated_content_is_counted_once() -> None:
    """R2.2: the cache returns the same counts as uncached counting."""
    cached, uncached = TokenCounter(), TokenCounter(use_cache=False)
    system = "Be careful. " * 400
    msgs = [{"role": "user", "content": f"turn {i}"} for i in range(20)]
    for _ in range(3):
        assert cached.count_prompt(msgs, system=system, tools=TOOLS) == uncached.count_prompt(
            msgs, system=system, tools=TOOLS
        )


def test_r2_2_equal_tool_lists_are_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """R2.2: tool lists equal in content but distinct objects (a server parses the tools
    anew for every request) are encoded to JSON and counted once; a changed list, or
    one that cannot be keyed, is counted for itself."""
    dumps = json.dumps
    encoded: list[Any] = []

    def counting(obj: Any, **kw: Any) -> str:
        if isinstance(obj, list):
            encoded.append(obj)
        return dumps(obj, **kw)

    monkeypatch.setattr(json, "dumps", counting)
    tc = TokenCounter()
    first = tc.count_tools(copy.deepcopy(TOOLS))
    assert tc.count_tools(copy.deepcopy(TOOLS)) == first and len(encoded) == 1
    changed = [*copy.deepcopy(TOOLS), {"name": "extra", "input_schema": {}}]
    assert tc.count_tools(changed) > first and len(encoded) == 2
    assert tc.count_tools(copy.deepcopy(TOOLS)) == first and len(encoded) == 2
    schema: dict[str, Any] = TOOLS[0]["input_schema"]  # type: ignore[assignment]
    unkeyed = [{**TOOLS[0], "input_schema": _Schema(schema)}]
    assert tc.count_tools(unkeyed) == tc.count_tools([TOOLS[0]]) and len(encoded) == 4


class _Schema(dict[str, Any]):
    """A dict pickle cannot take (as a local class), that JSON encodes as its items."""

    def __reduce__(self) -> Any:
        raise TypeError("not picklable")


def test_r2_3_discrepancy_logged_and_calibration_converges() -> None:
    """R2.3: > 10 % error is logged and the per-model factor moves estimates to the actual."""
    tc = TokenCounter()
    msgs = [{"role": "user", "content": "Please refactor the parser module " * 20}]
    errors = []
    with capture_logs() as logs:
        for _ in range(5):
            est = tc.estimate("sonnet", msgs)
            actual = round(est.raw * 1.3)  # the provider counts 30 % more
            errors.append(tc.reconcile(est, actual).error)
    assert errors[0] > 0.10 and errors[-1] < 0.10
    assert [e for e in logs if e["event"] == "token_estimate_discrepancy"]
    assert tc.factor("sonnet") == pytest.approx(1.3, rel=0.02)
    assert tc.factor("haiku") == tc.factor("sonnet")  # borrowed until haiku answers


def test_r2_3_small_discrepancy_not_logged() -> None:
    """R2.3: within 10 % of the estimate nothing is logged."""
    tc = TokenCounter()
    est = tc.estimate("haiku", [{"role": "user", "content": "x " * 200}])
    with capture_logs() as logs:
        rec = tc.reconcile(est, round(est.calibrated * 1.05))
    assert not rec.logged and not logs


def test_r2_4_cache_aware_cost() -> None:
    """R2.4: cache reads at 0.1×, 5-minute writes at 1.25×, 1-hour writes at 2× input price."""
    spec = ModelSpec(model_id="m", input_usd_per_mtok=3.0, output_usd_per_mtok=15.0)
    m = 1_000_000
    assert cost_usd(Usage(prompt_tokens=m), spec) == pytest.approx(3.0)
    assert cost_usd(Usage(completion_tokens=m), spec) == pytest.approx(15.0)
    assert cost_usd(Usage(cache_read_tokens=m), spec) == pytest.approx(0.3)
    assert cost_usd(Usage(cache_write_5m_tokens=m), spec) == pytest.approx(3.75)
    assert cost_usd(Usage(cache_write_1h_tokens=m), spec) == pytest.approx(6.0)
    custom = spec.model_copy(update={"cache_write_5m_multiplier": 1.5})
    assert cost_usd(Usage(cache_write_5m_tokens=m), custom) == pytest.approx(4.5)
