"""What every config section shares: the frozen base model and the spec's vocabularies.

The tiers, the R1.4 task types, complexities and R5.1 priority classes are
named here once; the section modules and ``VibeConfig`` build on them.
"""

from __future__ import annotations

import math
import types
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

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


def _a_word(value: str) -> str:
    # a host, model id or name with a space, line break or control character in it is a
    # typo or a pasted line end: it would fail every request, or bind every interface ("")
    if not value or not all("!" <= ch <= "~" for ch in value):
        raise ValueError("must be a non-empty word of visible ASCII characters (no space, "
                         "line break or control character)")
    return value


def _an_env_name(value: str) -> str:
    _a_word(value)
    if "=" in value:
        raise ValueError("an environment variable name cannot hold '='")
    return value


#: A host, model id or alias: visible ASCII, no space or control character.
Word = Annotated[str, AfterValidator(_a_word)]
#: The name of an environment variable (one that can be set: no '=', no NUL).
EnvName = Annotated[str, AfterValidator(_an_env_name)]


def by_complexity(simple: _T, moderate: _T, complex_: _T) -> dict[Complexity, _T]:
    return {"simple": simple, "moderate": moderate, "complex": complex_}


def by_tier(haiku: _T, sonnet: _T, opus: _T) -> dict[Tier, _T]:
    return {"haiku": haiku, "sonnet": sonnet, "opus": opus}


class FieldProblem(ValueError):
    """A check over a whole section that is about one of its fields: the config error then
    names that field (``alerts.warning``), not the section, and shows only its value."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.value = value
        self.reason = reason


#: Numbers beyond this are refused: no budget, interval or count is that large, and
#: larger integers lose precision as floats.
MAX_NUMBER = 2**53


def _number_kind(annotation: Any) -> bool:
    """Whether ``annotation`` is ``int`` or ``float`` (through ``Annotated`` and ``| None``)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _number_kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return bool(args) and all(_number_kind(a) for a in args)
    return annotation in (int, float)


def bad_number(annotation: Any, value: Any) -> str | None:
    """Why ``value`` is not a number where ``annotation`` means one, directly or inside a
    table or array: ``true``/``false`` (pydantic would quietly read ``true`` as 1) or a
    number too large to be meant; ``None`` when it is fine or not a number field."""
    if isinstance(value, bool):
        return "a number is expected, not true/false" if _number_kind(annotation) else None
    if isinstance(value, float) and not math.isfinite(value) and _number_kind(annotation):
        return "must be a finite number, not inf or nan"
    if isinstance(value, int | float):
        too_big = _number_kind(annotation) and abs(value) > MAX_NUMBER
        return f"must be at most {MAX_NUMBER:,} in size" if too_big else None
    origin, args = get_origin(annotation), get_args(annotation)
    found: list[str | None] = []
    if origin is Annotated or origin in (Union, types.UnionType):
        found = [bad_number(a, value) for a in args if a is not type(None)]
    elif origin is dict and isinstance(value, dict) and len(args) == 2:
        found = [bad_number(args[1], v) for v in value.values()]
    elif origin in (tuple, list) and isinstance(value, list | tuple) and args:
        if origin is tuple and len(args) == len(value) and Ellipsis not in args:
            found = [bad_number(a, v) for a, v in zip(args, value, strict=True)]
        else:
            found = [bad_number(args[0], v) for v in value]
    return next((f for f in found if f is not None), None)


def _holds_number(annotation: Any) -> bool:
    """Whether ``annotation`` has ``int`` or ``float`` anywhere in it."""
    if annotation in (int, float):
        return True
    return any(_holds_number(a) for a in get_args(annotation) if a is not Ellipsis)


#: Per config class, its fields that hold numbers (computed once, on first validation).
_NUMBER_FIELDS: dict[type, tuple[tuple[str, Any, bool], ...]] = {}


class FrozenModel(BaseModel):
    """Base of every config model: immutable, an unknown key is an error, numbers are finite
    (``inf``/``nan`` refused) and a boolean is never read as a number."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bad_numbers(cls, data: Any) -> Any:
        # one check per model, over its number fields only: config models are also built at
        # run time (limits of every task), so this must stay cheap
        if not isinstance(data, dict):
            return data
        fields = _NUMBER_FIELDS.get(cls)
        if fields is None:
            fields = _NUMBER_FIELDS[cls] = tuple(
                (name, f.annotation, _number_kind(f.annotation))
                for name, f in cls.model_fields.items() if _holds_number(f.annotation))
        zeros: dict[str, Any] = {}
        for name, annotation, plain in fields:
            if name not in data:
                continue
            value = data[name]
            if plain and (value is None or (type(value) in (int, float)
                                            and -MAX_NUMBER <= value <= MAX_NUMBER)):
                if value == 0 and type(value) is float:
                    zeros[name] = 0.0
                continue  # the common case, without the general walk (NaN fails the range)
            reason = bad_number(annotation, value)
            if reason is not None:
                raise FieldProblem(name, value, reason)
            zeros[name] = _positive_zero(value)
        # -0.0 is zero, and passes ``ge=0``: it is kept as 0.0, so no limit, message or
        # file ever reads "-0" (the caller's dict is left as it was)
        return {**data, **zeros} if zeros else data


def _positive_zero(value: Any) -> Any:
    """``value`` with every float zero inside it as ``0.0`` (never ``-0.0``)."""
    if type(value) is float:
        return 0.0 if value == 0 else value
    if isinstance(value, dict):
        return {k: _positive_zero(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_positive_zero(v) for v in value)
    return value
