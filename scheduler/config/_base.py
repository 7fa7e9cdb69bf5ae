"""What every config section shares: the frozen base model and the spec's vocabularies.

The tiers, the R1.4 task types, complexities and R5.1 priority classes are
named here once; the section modules and ``VibeConfig`` build on them.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict

_T = TypeVar("_T")
Tier = Literal["haiku", "sonnet", "opus"]
TIERS: tuple[Tier, ...] = ("haiku", "sonnet", "opus")
TaskType = Literal[
    "question_answering",
    "code_modification",
    "bug_fix",
    "feature_implementation",
    "architecture_design",
]
TASK_TYPES: tuple[TaskType, ...] = (
    "question_answering",
    "code_modification",
    "bug_fix",
    "feature_implementation",
    "architecture_design",
)
Complexity = Literal["simple", "moderate", "complex"]
PriorityClass = Literal["critical_path", "user_waiting", "normal", "background"]
#: R5.1 base priorities.
PRIORITY_VALUES: dict[str, int] = {
    "critical_path": 3,
    "user_waiting": 3,
    "normal": 2,
    "background": 1,
}


def by_complexity(simple: _T, moderate: _T, complex_: _T) -> dict[Complexity, _T]:
    return {"simple": simple, "moderate": moderate, "complex": complex_}


def by_tier(haiku: _T, sonnet: _T, opus: _T) -> dict[Tier, _T]:
    return {"haiku": haiku, "sonnet": sonnet, "opus": opus}


class FrozenModel(BaseModel):
    """Base of every config model: immutable, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")
