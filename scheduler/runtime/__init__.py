"""The governed path and the process: gateway, agent context, orchestrator, composition root.

May import every layer below it; nothing below imports it.
"""
