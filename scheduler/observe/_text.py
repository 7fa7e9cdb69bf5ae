"""Short, uncut figures for narrow screens: ``12.3k``, ``$0.97``, ``4m``, ``6 s ago``.

Every formatter here has a bounded width, so the live view can size its columns
once and never has to cut a number (a cut ``8,1…`` reads as a different number).
Text that may be cut (reasons, messages) goes through :func:`clip`, which cuts at
a word boundary, never inside a number.
"""

from __future__ import annotations

import math
from datetime import datetime

__all__ = ["amount", "bar", "clip", "count", "duration", "money", "percent", "when"]

_UNITS = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def count(n: float) -> str:
    """``999``, ``9,999``, ``12.3k``, ``4.5M`` (at most 6 characters below 10¹²)."""
    if abs(n) < 10_000:
        return f"{n:,.0f}"
    for div, unit in _UNITS:
        scaled = round(n / div, 1)
        if abs(scaled) >= 1:
            # 999.95k rounds to 1000.0k: one unit up reads better and stays short
            if abs(scaled) >= 1000 and unit != "G":
                continue
            return f"{scaled:.1f}{unit}" if abs(scaled) < 100 else f"{scaled:.0f}{unit}"
    return f"{n:,.0f}"


def money(usd: float) -> str:
    """``$0.0042``, ``$0.967``, ``$12.34``, ``$1.2k``."""
    if usd == 0:
        return "$0"
    if usd < 0.01:
        return f"${usd:.4f}"
    if usd < 1:
        return f"${usd:.3f}"
    if usd < 1000:
        return f"${usd:.0f}" if usd >= 10 and usd == round(usd) else f"${usd:.2f}"
    return f"${count(usd)}"


def duration(seconds: float) -> str:
    """``45s``, ``12m``, ``1.5h``."""
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def amount(value: float, dimension: str) -> str:
    """A budget figure in its dimension's unit."""
    if dimension.startswith("cost"):
        return money(value)
    if "time" in dimension:
        return duration(value)
    return count(value)


def percent(fraction: float) -> str:
    """``46%``, ``104%``; four characters at most (``>999%``-level overdrafts read ``999%``)."""
    return f"{min(fraction, 9.99):.0%}"


def bar(fraction: float, width: int) -> str:
    """``█`` for the used part, ``░`` for the rest (capped at full)."""
    n = round(min(max(fraction, 0.0), 1.0) * width)
    return "█" * n + "░" * (width - n)


def clip(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut with ``…`` at a word boundary.

    A cut never lands inside a number: a word is cut only after a letter, and a
    whole number before the ``…`` keeps a space (``limit 5000 …``).
    """
    if len(text) <= width and "\n" not in text:
        return text
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    if width < 2:
        return "…"[:width]
    head = text[: width - 1]
    if not text[width - 1].isspace():  # the cut falls inside a word
        head = head[: head.rfind(" ")] if " " in head else head.rstrip("0123456789,.")
    head = head.rstrip(" ,;:+-=(")
    if head and head[-1].isdigit():
        if len(head) + 2 > width:
            head = head[: head.rfind(" ")].rstrip(" ,;:+-=(") if " " in head else ""
        if head and head[-1].isdigit():
            return f"{head} …"
    return f"{head}…"


def when(at: float, now: float | None = None, wall: float = 0.0) -> str:
    """How long ago an event was (``6 s ago``, ``4 min ago``), or its clock time.

    ``now`` and ``at`` are the event loop's clock; without ``now`` (a stored event)
    the wall-clock time ``wall`` is shown as ``HH:MM:SS``.
    """
    if now is not None:
        ago = max(0.0, now - at)
        if ago < 100:
            return f"{math.floor(ago)} s ago"
        if ago < 6000:
            return f"{math.floor(ago / 60)} min ago"
        return f"{ago / 3600:.1f} h ago"
    if wall > 0:
        return datetime.fromtimestamp(wall).strftime("%H:%M:%S")
    return "-"
