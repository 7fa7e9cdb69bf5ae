"""Model choice: the catalog, the router, health and recovery, replanning (R4, R6).

May import ``core``, ``config``, ``budget``, ``tasks`` and ``policies``.
"""
