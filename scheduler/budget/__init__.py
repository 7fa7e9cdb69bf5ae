"""Budgets: task profiles, token estimates and the live tracker of nested scopes (R1, R2).

Owns task-type and complexity detection, tiktoken estimates, and the tracker that
charges usage to task ⊂ session ⊂ day scopes.  May import ``core``, ``config`` and ``store``.
"""
