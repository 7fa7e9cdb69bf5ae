"""Expiring token / API-call leases from a priority-with-fairness allocator (R5.3–R5.5).

Owns pools, leases, the wait queues, statistics, pool capacity and the global quota
slices; asyncio-specific parking lives in ``_asyncio_park``.  May import ``core``,
``config``, ``store`` and ``policies``.
"""

from scheduler.allocator._allocator import Allocator as Allocator
from scheduler.allocator._allocator import open_allocator as open_allocator
from scheduler.allocator._capacity import PoolCapacity as PoolCapacity
from scheduler.allocator._leases import Lease as Lease
from scheduler.allocator._quota import GlobalQuota as GlobalQuota
from scheduler.allocator._stats import AllocatorStatistics as AllocatorStatistics
from scheduler.allocator._stats import PoolStatistics as PoolStatistics
from scheduler.allocator._stats import WaiterStatistics as WaiterStatistics

__all__ = [
    "Allocator",
    "AllocatorStatistics",
    "GlobalQuota",
    "Lease",
    "PoolCapacity",
    "PoolStatistics",
    "WaiterStatistics",
    "open_allocator",
]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
