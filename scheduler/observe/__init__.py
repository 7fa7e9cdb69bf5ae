"""What people and tools look at: snapshots, status files, history, metrics, the live view, logging.

Reads the parts it is handed; never drives them.  May import every layer below ``runtime``.
"""
