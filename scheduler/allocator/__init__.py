"""Expiring token / API-call leases from a priority-with-fairness allocator (R5.3–R5.5).

Owns pools, leases, the wait queues, statistics, pool capacity and the global quota
slices; asyncio-specific parking lives in ``_asyncio_park``.  May import ``core``,
``config``, ``store`` and ``policies``.
"""
