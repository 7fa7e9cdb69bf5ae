"""The ``vibe-engine`` command line: run, demo, status, decide, report, fake-api, plugins.

The application layer: it wires ``scheduler`` and ``agents`` (plugin discovery and
providers).  May import everything; nothing imports it.
"""

from scheduler.cli._app import main as main

__all__ = ["main"]
