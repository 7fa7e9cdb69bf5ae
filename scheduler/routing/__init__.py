"""Model choice: the catalog, the router, health and recovery, replanning (R4, R6).

May import ``core``, ``config``, ``budget``, ``tasks`` and ``policies``.
"""

from scheduler.routing._catalog import ModelCatalog as ModelCatalog
from scheduler.routing._health import HealthMonitor as HealthMonitor
from scheduler.routing._health import HealthStatistics as HealthStatistics
from scheduler.routing._replan import Replanner as Replanner
from scheduler.routing._router import Router as Router
from scheduler.routing._router import RouterStatistics as RouterStatistics
from scheduler.routing._router import Upgrade as Upgrade
from scheduler.routing._router import task_info as task_info

__all__ = [
    "HealthMonitor",
    "HealthStatistics",
    "ModelCatalog",
    "Replanner",
    "Router",
    "RouterStatistics",
    "Upgrade",
    "task_info",
]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
