"""Shared benchmark plumbing: argument parsing, medians, the JSON envelope."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 60 s")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per figure")
    return parser.parse_args()


def median_of(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def versions(*packages: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def emit(name: str, sizes: dict[str, Any], results: dict[str, Any], packages: tuple[str, ...],
         as_json: bool) -> None:
    doc = {
        "benchmark": name,
        "sizes": sizes,
        "python": platform.python_version(),
        "versions": versions(*packages),
        "results": results,
    }
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def progress(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
