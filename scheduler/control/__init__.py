"""Human control: alerts, pause and decisions, overdraft and critical sections, the control socket (R3).

May import ``core``, ``config``, ``store``, ``budget`` and ``policies``.
"""
