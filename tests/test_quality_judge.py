"""R4.3's quality signal for providers that do not score answers: the LLM-as-judge scorer."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agents import AgentContext
from scheduler import (
    Completion,
    CompletionRequest,
    ConfigError,
    Event,
    TaskSpec,
    Usage,
)
from scheduler.runtime import RunReport
from scheduler.runtime._quality import JUDGE_SYSTEM
from scheduler.testing import build_orchestrator, run_virtual


class UnscoredProvider:
    """Answers without a quality score, like the real API; the judge rates by model."""

    def __init__(self, ratings: dict[str, str]) -> None:
        self.ratings = ratings  # answering model -> the judge's reply
        self.calls: list[tuple[str, str]] = []  # (model, "judge" | "work")

    async def complete(self, request: CompletionRequest) -> Completion:
        await anyio.sleep(0.5)
        if request.system == JUDGE_SYSTEM:
            self.calls.append((request.model, "judge"))
            answered_by = str(request.messages[0]["content"]).split("Answer:\n")[1][:6]
            return Completion(self.ratings.get(answered_by.strip("[] "), "?"), Usage(200, 2),
                              request.model)
        self.calls.append((request.model, "work"))
        return Completion(f"[{request.model}] the patch", Usage(1_000, 300), request.model)

    async def aclose(self) -> None:
        return None


class OneCall:
    async def run(self, ctx: AgentContext) -> str:
        reply = await ctx.llm.complete([{"role": "user", "content": ctx.task.prompt}])
        return reply.text


def run(tmp_path: Path, ratings: dict[str, str], scorer: str = "llm_judge",
        ) -> tuple[UnscoredProvider, RunReport, list[Event]]:
    provider = UnscoredProvider(ratings)
    orch = build_orchestrator({"one": OneCall}, state_dir=tmp_path, provider=provider,
                              routing={"quality_scorer": scorer})
    events: list[Event] = []
    orch.bus.subscribe(events.append)
    spec = TaskSpec(id="t1", agent="one", prompt="Update the docstring of the loader",
                    task_type="code_modification")
    return provider, run_virtual(orch.run, [spec]), events


def test_r4_3_llm_judge_low_score_upgrades_to_the_next_tier(tmp_path: Path) -> None:
    """R4.3: with ``routing.quality_scorer = "llm_judge"`` an unscored answer is rated by
    the cheapest tier; a rating below 5/10 (quality < 0.5) retries on the next tier
    ("upgrading from haiku to sonnet due to quality issues"); the judge's tokens are
    charged to the task."""
    provider, report, events = run(tmp_path, {"haiku": "3", "sonnet": "8/10"})
    assert provider.calls == [("haiku", "work"), ("haiku", "judge"),
                              ("sonnet", "work"), ("haiku", "judge")]
    upgrade = [e for e in events if e.name == "routing_upgrade"]
    assert len(upgrade) == 1
    assert upgrade[0].message == "upgrading from haiku to sonnet due to quality issues"
    assert upgrade[0].data["reason"] == "quality 0.30 < 0.5"
    outcome = report.outcomes["t1"]
    assert outcome.status == "completed"
    assert outcome.usage.calls == 4  # two answers, two verdicts, all charged
    assert report.by_model["haiku"].calls == 3


def test_r4_3_good_or_unreadable_verdicts_change_nothing(tmp_path: Path) -> None:
    """R4.3: a good rating keeps the answer; an unreadable verdict leaves it unscored."""
    provider, _, events = run(tmp_path / "a", {"haiku": "9"})
    assert provider.calls == [("haiku", "work"), ("haiku", "judge")]
    provider, _, events = run(tmp_path / "b", {"haiku": "fine by me"})
    assert provider.calls == [("haiku", "work"), ("haiku", "judge")]
    assert not [e for e in events if e.name == "routing_upgrade"]


def test_no_scorer_by_default(tmp_path: Path) -> None:
    """Without a scorer (the default) unscored answers are not judged."""
    provider, _, _ = run(tmp_path, {"haiku": "1"}, scorer="none")
    assert provider.calls == [("haiku", "work")]


def test_unknown_scorer_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"routing\.quality_scorer"):
        run(tmp_path, {}, scorer="nonsense")


def test_judge_reads_the_first_number() -> None:
    """The verdict parser: '7', '7/10', 'Rating: 10', '4.5' → 0.7, 0.7, 1.0, 0.45."""
    from scheduler.runtime._quality import _NUMBER

    got = [float(m.group(0)) / 10 if (m := _NUMBER.search(t)) else None
           for t in ("7", "7/10", "Rating: 10", "4.5", "none")]
    assert got == [0.7, 0.7, 1.0, 0.45, None]
