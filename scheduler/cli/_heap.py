"""The long-running commands' heap: what start-up built stays out of the collector's way."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Move every object alive now (modules, classes, the config, the model catalog,
    tiktoken's tables, the orchestrator's own parts) into the collector's permanent
    generation.  They live as long as the process, and each full collection would scan
    them again: for ``serve``, about a tenth of its CPU per call.  Process-wide, so only
    the CLI's own long-running commands call it, never the library."""
    gc.collect()
    gc.freeze()
