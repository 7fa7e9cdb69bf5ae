"""Typed per-task runtime state: status, signals and controls shared by the parts.

Owns ``TaskHandle``, ``TaskStatus``, ``TaskSignals`` and the run's ``TaskTable``.
May import ``core``, ``config`` and ``budget``.
"""

from scheduler.tasks._state import Abort as Abort
from scheduler.tasks._state import TaskHandle as TaskHandle
from scheduler.tasks._state import TaskSignals as TaskSignals
from scheduler.tasks._state import TaskStatus as TaskStatus
from scheduler.tasks._table import TaskTable as TaskTable

__all__ = ["Abort", "TaskHandle", "TaskSignals", "TaskStatus", "TaskTable"]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
