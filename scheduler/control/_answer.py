"""The ``vibe-engine decide`` lines that answer a paused task (R3.4), ready to copy.

One place builds them, so the live view, ``status`` and a webhook's notification
offer the same commands.
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["answer_command", "decide_commands"]

#: ``vibe-engine decide`` options that add to a dimension; other token dimensions add tokens.
_ADD_OPTION = {"cost_usd": "--cost", "cost_warning_usd": "--cost", "time_s": "--time-s",
               "call_time_s": "--time-s", "file_edits": "--file-edits",
               "shell_commands": "--shell-commands", "dangerous_commands": "--shell-commands"}
_DEFAULT_STATE_DIR = Path(".vibe-engine")


def _round_up(x: float) -> float:
    """``x`` rounded up to one significant digit and a half (5,000; 20,000; 0.5; 150)."""
    if x <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(x))
    for m in (1, 1.5, 2, 3, 5, 10):
        if m * step >= x:
            return float(m * step)
    return float(10 * step)  # pragma: no cover - the loop always returns


def decide_commands(task_id: str, dimension: str = "tokens", used: float = 0.0,
                    limit: float = 0.0, state_dir: Path | str = _DEFAULT_STATE_DIR,
                    ) -> tuple[str, str, str]:
    """The three answers: add budget, finish, review.

    The amount offered doubles the limit (at least what is over it), so the task
    can go on after its reservation; ``--state-dir`` is named unless it is the default.
    """
    option = _ADD_OPTION.get(dimension, "--tokens")
    need = _round_up(max(limit, used - limit))
    figure = f"{need:g}" if option == "--cost" else f"{math.ceil(need)}"
    where = "" if Path(state_dir) == _DEFAULT_STATE_DIR else f" --state-dir {state_dir}"
    base = f"vibe-engine decide{where} {task_id}"
    return f"{base} add {option} {figure}", f"{base} finish", f"{base} review"


def answer_command(task_id: str, dimension: str = "tokens", used: float = 0.0,
                   limit: float = 0.0, state_dir: Path | str = _DEFAULT_STATE_DIR) -> str:
    """The three answers on one line: ``vibe-engine decide t26 add --tokens 10000 |
    finish | review``."""
    add, _, _ = decide_commands(task_id, dimension, used, limit, state_dir)
    return f"{add} | finish | review"
