"""Complexity assessment (SPEC R4.1) and its learning from corrections (R4.3).

A task is scored from three features, each at one of three levels:

* expected output tokens: simple < 5,000; moderate 5,000–20,000; complex > 20,000;
* reasoning depth: direct single step / multi-step / architecture and trade-offs;
* kind of task: simple (formatting, simple refactor, doc update), moderate (bug
  fix, feature add, test writing), complex (architecture design, security
  review, optimisation).

Each level gives points (by default 0 / 2 / 4), so a task that is simple on
every feature scores 0, moderate on every feature 6, complex on every feature
12; score 0–3 → haiku, 4–6 → sonnet, 7+ → opus.

Learning: when a task had to be upgraded to a stronger tier, later *similar*
tasks (same task type, and the same feature levels or mostly the same
keywords) get a raised score: each correction adds ``correction_points`` (one
feature level), each confirmed success of a similar task takes back
``correction_points / forget_after_successes``, and the raise never lifts a
task past the lowest score of the tier it was upgraded to.  So a task class
near a band edge moves up after one correction; a class that is mostly fine
on its tier moves up only when corrections come faster than successes (more
than one in four with the defaults) — one unlucky failure does not send a
whole class of tasks to a dearer model for ever.  The policy is pure: no
clock, no I/O, only what :meth:`learn` and :meth:`confirm` were told.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

Level = Literal["simple", "moderate", "complex"]
Depth = Literal["direct", "multi_step", "architecture"]
LEVELS: tuple[Level, ...] = ("simple", "moderate", "complex")
DEPTHS: tuple[Depth, ...] = ("direct", "multi_step", "architecture")

#: R4.1 kinds of task, by keyword (checked complex first).
KIND_KEYWORDS: dict[Level, tuple[str, ...]] = {
    "complex": ("architecture", "design", "security", "optimis", "optimiz", "trade-off",
                "tradeoff", "performance", "scalab", "migrat"),
    "moderate": ("bug", "fix", "feature", "implement", "add ", "test", "endpoint", "crash",
                 "error"),
    "simple": ("format", "rename", "typo", "doc", "readme", "comment", "lint", "simple refactor",
               "summar", "look up", "lookup"),
}
DEPTH_KEYWORDS: dict[Depth, tuple[str, ...]] = {
    "architecture": ("architecture", "trade-off", "tradeoff", "design", "compare", "strategy",
                     "security review"),
    "multi_step": ("then", "steps", "across", "multiple", "refactor", "implement", "debug",
                   "investigate", "migrate", "and also"),
}
#: Kind implied by the R1.4 task type when no keyword decides.
TYPE_KIND: dict[str, Level] = {
    "question_answering": "simple",
    "code_modification": "simple",
    "bug_fix": "moderate",
    "feature_implementation": "moderate",
    "architecture_design": "complex",
}
_WORD = re.compile(r"[a-z][a-z0-9_\-]{2,}")


class ComplexityParams(BaseModel):
    """Parameters of :class:`ScoredComplexity`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    points: tuple[int, int, int] = (0, 2, 4)
    simple_below_tokens: int = Field(default=5_000, gt=0)
    complex_above_tokens: int = Field(default=20_000, gt=0)
    #: lowest score of each tier (haiku from 0).
    tier_floors: dict[str, int] = Field(default_factory=lambda: {"sonnet": 4, "opus": 7})
    #: keyword overlap (Jaccard) that makes two tasks of one type similar.
    similar_keywords: float = Field(default=0.5, ge=0, le=1)
    #: points one correction adds to similar tasks' scores.
    correction_points: int = Field(default=2, ge=0)
    #: similar successes that undo one correction.
    forget_after_successes: int = Field(default=3, gt=0)
    #: learned task classes remembered per task type (oldest forgotten first).
    memory: int = Field(default=1_000, gt=0)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What routing knows about a task: plain data built by the scheduler."""

    task_id: str
    task_type: str
    complexity: Level = "moderate"
    prompt: str = ""
    expected_output_tokens: int | None = None
    reasoning_depth: Depth | None = None
    requires_high_capability: bool = False
    priority: int = 2


@dataclass(frozen=True, slots=True)
class Features:
    """The scored features of a task."""

    task_type: str
    output: Level
    depth: Depth
    kind: Level
    keywords: frozenset[str] = field(default_factory=frozenset)

    @property
    def levels(self) -> tuple[int, int, int]:
        return LEVELS.index(self.output), DEPTHS.index(self.depth), LEVELS.index(self.kind)


@dataclass(frozen=True, slots=True)
class Assessment:
    """A score, the tier it maps to, and why."""

    score: int
    tier: str
    features: Features
    raw_score: int
    learned: bool

    @property
    def reason(self) -> str:
        f = self.features
        learned = f", raised from {self.raw_score} by past corrections" if self.learned else ""
        return (f"{self.tier} (score {self.score}: output {f.output}, depth {f.depth}, "
                f"type {f.kind}{learned})")


@runtime_checkable
class ComplexityPolicy(Protocol):
    """Scores tasks (R4.1) and learns from upgrades (R4.3)."""

    def assess(self, task: TaskInfo) -> Assessment: ...

    def learn(self, task: TaskInfo, upgraded_to: str) -> None: ...

    def confirm(self, task: TaskInfo, model: str) -> bool | None:
        """A similar task succeeded on ``model``; ``False`` when nothing learned changed
        (``None`` counts as changed: what was learned is saved again)."""


#: How many tasks' features :class:`ScoredComplexity` keeps (about the tasks calling at
#: once; the cache starts over when full).
_FEATURES_CACHED = 4096


class ScoredComplexity:
    """The default :class:`ComplexityPolicy` (see the module docstring)."""

    def __init__(self, params: ComplexityParams | None = None) -> None:
        self.params = params or ComplexityParams()
        self._learned: dict[str, deque[_Learned]] = {}
        #: Features by what they are worked out from (:func:`_content`): a routed call asks
        #: for them up to three times (assess, confirm, learn), a task's prompt does not
        #: change between its calls, and tasks alike share one (not one per task id).
        self._features: dict[_Content, Features] = {}
        #: Assessments by the same key, until something is learned.
        self._assessed: dict[_Content, Assessment] = {}

    # -- features ----------------------------------------------------------------------
    def features(self, task: TaskInfo) -> Features:
        key = _content(task)
        found = self._features.get(key)
        if found is not None:
            return found
        text = task.prompt.lower()
        f = Features(
            task.task_type, self._output_level(task), self._depth(task, text),
            self._kind(task, text), frozenset(_WORD.findall(text)),
        )
        if len(self._features) >= _FEATURES_CACHED:
            self._features.clear()  # bounded: tasks that ended are not asked again
        self._features[key] = f
        return f

    def _output_level(self, task: TaskInfo) -> Level:
        n = task.expected_output_tokens
        if n is None:
            return task.complexity
        if n < self.params.simple_below_tokens:
            return "simple"
        return "complex" if n > self.params.complex_above_tokens else "moderate"

    @staticmethod
    def _depth(task: TaskInfo, text: str) -> Depth:
        if task.reasoning_depth is not None:
            return task.reasoning_depth
        for depth in ("architecture", "multi_step"):
            if any(k in text for k in DEPTH_KEYWORDS[depth]):
                return depth
        return DEPTHS[LEVELS.index(task.complexity)]

    @staticmethod
    def _kind(task: TaskInfo, text: str) -> Level:
        for level in ("complex", "moderate", "simple"):
            if any(k in text for k in KIND_KEYWORDS[level]):
                return level
        return TYPE_KIND.get(task.task_type, "moderate")

    # -- scoring -----------------------------------------------------------------------
    def tier_of(self, score: int) -> str:
        floors = sorted(self.params.tier_floors.items(), key=lambda kv: kv[1], reverse=True)
        return next((tier for tier, low in floors if score >= low), "haiku")

    def assess(self, task: TaskInfo) -> Assessment:
        # :func:`_content`, inline: asked twice before every routed call
        key = (task.task_type, task.complexity, task.prompt, task.expected_output_tokens,
               task.reasoning_depth)
        found = self._assessed.get(key)
        if found is not None:
            return found
        f = self.features(task)
        pts = self.params.points
        raw = sum(pts[level] for level in f.levels)
        score = max(raw, self._learned_score(f, raw))
        if len(self._assessed) >= _FEATURES_CACHED:
            self._assessed.clear()
        found = self._assessed[key] = Assessment(score, self.tier_of(score), f, raw, score > raw)
        return found

    # -- learning (R4.3) ---------------------------------------------------------------
    def similar(self, a: Features, b: Features) -> bool:
        """Same task type, and the same feature levels or mostly the same keywords."""
        if a.task_type != b.task_type:
            return False
        if a.levels == b.levels:
            return True
        union = a.keywords | b.keywords
        if not union:
            return False
        return len(a.keywords & b.keywords) / len(union) >= self.params.similar_keywords

    def _learned_score(self, f: Features, raw: int) -> int:
        best = raw
        for e in self._learned.get(f.task_type, ()):
            if e.pressure > 1e-9 and raw < e.cap and self.similar(f, e.features):
                raised = raw + int(e.pressure * self.params.correction_points + 0.5)
                best = max(best, min(raised, e.cap))
        return best

    def learn(self, task: TaskInfo, upgraded_to: str) -> None:
        """Raise the score of tasks similar to ``task`` (at most to ``upgraded_to``'s band)."""
        f = self.features(task)
        self._assessed.clear()  # scores of similar tasks rise
        low = self.params.tier_floors.get(upgraded_to, 0)
        bucket = self._learned.setdefault(task.task_type, deque(maxlen=self.params.memory))
        entry = next((e for e in bucket if e.cap == low and self.similar(f, e.features)), None)
        if entry is None:
            bucket.append(_Learned(f, low, 1.0))
        else:
            entry.pressure += 1.0

    def confirm(self, task: TaskInfo, model: str) -> bool:
        """A similar task succeeded on ``model``: learned raises fade a little (``True``
        when one did)."""
        learned = self._learned.get(task.task_type)
        if not learned:
            return False
        f = self.features(task)
        step = 1.0 / self.params.forget_after_successes
        changed = False
        for e in learned:
            if e.pressure > 0 and self.similar(f, e.features):
                e.pressure = max(0.0, e.pressure - step)
                changed = True
        if changed:
            self._assessed.clear()
        return changed


    # -- persistence (R4.3: what was learned survives a restart) -------------------------
    def export(self) -> dict[str, list[dict[str, object]]]:
        """What was learned, as plain JSON-able data (:meth:`restore` reads it back)."""
        return {
            task_type: [
                {"output": e.features.output, "depth": e.features.depth,
                 "kind": e.features.kind, "keywords": sorted(e.features.keywords),
                 "cap": e.cap, "pressure": e.pressure}
                for e in bucket
            ]
            for task_type, bucket in self._learned.items()
        }

    def restore(self, data: dict[str, list[dict[str, object]]]) -> None:
        """Replace what was learned with ``data`` from :meth:`export` (entries that do not
        parse are skipped: an old or hand-edited record never stops a run)."""
        learned: dict[str, deque[_Learned]] = {}
        for task_type, rows in data.items():
            bucket: deque[_Learned] = deque(maxlen=self.params.memory)
            for row in rows:
                try:
                    f = Features(task_type, row["output"], row["depth"], row["kind"],  # type: ignore[arg-type]
                                 frozenset(str(k) for k in row["keywords"]))  # type: ignore[attr-defined]
                    f.levels  # noqa: B018 - validates the levels
                    bucket.append(_Learned(f, int(row["cap"]), float(row["pressure"])))  # type: ignore[call-overload, arg-type]
                except (KeyError, TypeError, ValueError):
                    continue
            learned[task_type] = bucket
        self._learned = learned
        self._assessed.clear()


#: What a task's features are worked out from: its type, complexity, prompt, expected
#: output tokens and reasoning depth (not its id, priority or capability needs).
_Content = tuple[str, str, str, int | None, str | None]


def _content(task: TaskInfo) -> _Content:
    return (task.task_type, task.complexity, task.prompt, task.expected_output_tokens,
            task.reasoning_depth)


@dataclass(slots=True)
class _Learned:
    features: Features
    #: the lowest score of the tier the class was upgraded to: raises stop there.
    cap: int
    #: corrections not yet taken back by similar successes.
    pressure: float
