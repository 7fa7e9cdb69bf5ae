"""What people and tools look at: snapshots, status files, history, metrics, traces, the live
view, logging.

Reads the parts it is handed; never drives them.  May import every layer below ``runtime``.
"""

from scheduler.observe._live import LiveView as LiveView
from scheduler.observe._live import render_snapshot as render_snapshot
from scheduler.observe._logging import configure_logging as configure_logging
from scheduler.observe._metrics import Metrics as Metrics
from scheduler.observe._observers import Observers as Observers
from scheduler.observe._observers import put_states as put_states
from scheduler.observe._snapshot import BudgetBar as BudgetBar
from scheduler.observe._snapshot import EventView as EventView
from scheduler.observe._snapshot import ModelView as ModelView
from scheduler.observe._snapshot import PoolView as PoolView
from scheduler.observe._snapshot import Snapshot as Snapshot
from scheduler.observe._snapshot import TaskView as TaskView
from scheduler.observe._tracing import TracedProvider as TracedProvider
from scheduler.observe._tracing import Tracing as Tracing
from scheduler.observe._tracing import build_tracing as build_tracing
from scheduler.observe._tracing import tracing_wanted as tracing_wanted
from scheduler.observe._view import RunView as RunView
from scheduler.observe._view import snapshot_of as snapshot_of

__all__ = [
    "BudgetBar",
    "EventView",
    "LiveView",
    "Metrics",
    "ModelView",
    "Observers",
    "PoolView",
    "RunView",
    "Snapshot",
    "TaskView",
    "TracedProvider",
    "Tracing",
    "build_tracing",
    "configure_logging",
    "put_states",
    "render_snapshot",
    "snapshot_of",
    "tracing_wanted",
]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
