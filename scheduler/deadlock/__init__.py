"""Deadlocks: the networkx wait-for graph, the periodic detector, locks, resolution (R5.6, R5.7).

May import ``core``, ``config``, ``tasks`` and ``policies``.
"""
