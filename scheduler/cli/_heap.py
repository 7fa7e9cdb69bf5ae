"""The long-running commands' garbage collector: set up once start-up is done."""

from __future__ import annotations

import gc

#: Allocations between two young collections, and young (then middle) collections per
#: older one.  Python's defaults (700, 10, 10) suit short scripts; a governed call
#: allocates a few thousand objects, so serve collected several times per request.
#: With these, serve's added latency one call at a time had a median of 0.87 ms against
#: 1.15 ms with the defaults (8 alternating pairs, ``benchmarks.serve --quick``).
THRESHOLDS = (20_000, 20, 20)


def tune_collector() -> None:
    """Freeze every object alive now (modules, classes, the config, the model catalog,
    tiktoken's tables, the orchestrator's own parts) into the collector's permanent
    generation -- they live as long as the process, and each full collection would scan
    them again -- and collect less often (:data:`THRESHOLDS`).  Process-wide, so only the
    CLI's own long-running commands call it, never the library."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
