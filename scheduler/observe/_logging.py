"""Logging set-up; only the CLI calls it (STYLE.md 12)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(*, level: str = "info", json_logs: bool | None = None) -> None:
    """structlog to stderr: console lines on a TTY, JSON lines otherwise."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    # JSON lines carry an exception's traceback as text (``_log.exception`` in a server
    # that must not stop); the console renderer formats it itself
    renderers: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json_logs else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
