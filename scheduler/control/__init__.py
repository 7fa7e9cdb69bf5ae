"""Human control (R3): alerts, pause and decisions, overdraft, critical sections, control socket.

May import ``core``, ``config``, ``store``, ``budget`` and ``policies``.
"""
