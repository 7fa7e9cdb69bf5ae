"""Typed per-task runtime state: status, signals and controls shared by the parts.

Owns ``TaskHandle`` and ``TaskStatus``.  May import ``core``, ``config`` and ``budget``.
"""
