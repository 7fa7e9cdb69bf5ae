"""Deadlocks: the networkx wait-for graph, the periodic detector, locks, resolution (R5.6, R5.7).

May import ``core``, ``config``, ``budget``, ``tasks`` and ``policies``.
"""

from scheduler.deadlock._graph import DeadlockDetector as DeadlockDetector
from scheduler.deadlock._graph import DeadlockStatistics as DeadlockStatistics
from scheduler.deadlock._graph import WaitForGraph as WaitForGraph
from scheduler.deadlock._locks import LockManager as LockManager
from scheduler.deadlock._locks import LockStatistics as LockStatistics
from scheduler.deadlock._locks import TaskLocks as TaskLocks
from scheduler.deadlock._resolver import DeadlockResolver as DeadlockResolver

__all__ = [
    "DeadlockDetector",
    "DeadlockResolver",
    "DeadlockStatistics",
    "LockManager",
    "LockStatistics",
    "TaskLocks",
    "WaitForGraph",
]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
