"""Run ``vibe-engine ARGS`` under cProfile on CPU time (``benchmarks.serve --profile``).

    python -m benchmarks._profiled OUT.prof serve CONFIG --port 0

CPU time, not wall time: on a shared machine a wall-clock profile mostly measures
the other jobs; the profile is written when the command ends (SIGINT for serve).
"""

from __future__ import annotations

import cProfile
import sys
import time

from scheduler.cli import main


def run() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    sys.argv = ["vibe-engine", *argv]
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    try:
        main()
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    run()
