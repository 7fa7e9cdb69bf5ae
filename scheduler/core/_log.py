"""Loggers that stay silent in a library until the application configures logging.

structlog's built-in defaults print every level to stdout, so a module-level
``structlog.get_logger()`` makes a script that merely runs an ``Orchestrator``
chatter.  A library must not configure structlog globally (that would override
the application's own choice), so :func:`get_logger` decides per call instead:

* when the application (or the ``vibe-engine`` CLI) has called
  ``structlog.configure``, lines go through structlog as configured;
* otherwise they go to the standard library logger of the same name
  (``vibe_engine.…``), which carries only a ``NullHandler``: silent, unless the
  application configures ``logging`` (``logging.basicConfig(level="INFO")``
  shows them).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

#: The parent of every logger of the project; its NullHandler keeps Python's
#: last-resort handler from printing warnings of an application that set up nothing.
ROOT_LOGGER = "vibe_engine"
logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
           "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


#: What a structlog filtering bound logger has for a level below its own (the same
#: function for every level and class); a wrapper class of another kind never has it.
_DROPPED = structlog.make_filtering_bound_logger(logging.CRITICAL).debug


class LibraryLogger:
    """A structlog-style logger (``bind``, ``info(event, **fields)`` …) that routes each
    line to structlog when structlog is configured, else to :mod:`logging`."""

    __slots__ = ("_context", "_name", "_proxy", "_stdlib")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = dict(context or {})
        # a lazy proxy: it reads structlog's configuration at each call, so a CLI that
        # configures logging after this module was imported is honoured
        self._proxy = structlog.get_logger(name, **self._context)
        self._stdlib = logging.getLogger(name)

    @property
    def name(self) -> str:
        return self._name

    def bind(self, **values: Any) -> LibraryLogger:
        return LibraryLogger(self._name, {**self._context, **values})

    def new(self, **values: Any) -> LibraryLogger:
        return LibraryLogger(self._name, values)

    def unbind(self, *keys: str) -> LibraryLogger:
        return LibraryLogger(self._name, {k: v for k, v in self._context.items()
                                          if k not in keys})

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            # a level the configured filtering logger drops builds no logger (the lazy
            # proxy makes one per line): a debug line per model call costs nothing
            if getattr(structlog.get_config()["wrapper_class"], method, None) is not _DROPPED:
                getattr(self._proxy, method)(event, **fields)
            return
        level = _LEVELS[method]
        if not self._stdlib.isEnabledFor(level):
            return
        pairs = " ".join(f"{k}={v!r}" for k, v in {**self._context, **fields}.items())
        self._stdlib.log(level, "%s %s" if pairs else "%s%s", event, pairs,
                         exc_info=method == "exception", stacklevel=3)  # the caller's line

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    msg = info  # structlog's PrintLogger-style alias

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    warn = warning

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit("critical", event, fields)

    fatal = critical


def get_logger(name: str, **context: Any) -> LibraryLogger:
    """The logger every module of the project uses (see the module docstring)."""
    return LibraryLogger(name, context)
