"""The `vibe-engine` command line."""

from scheduler.cli._app import main as main

__all__ = ["main"]
