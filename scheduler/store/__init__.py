"""Durable stores: the only place that persists (R1.5, R2.6).

Owns the ``Store`` protocol and its memory, SQLite and Redis backends, the ledger
protocols (budget holds, quota slices) and the spool.  May import ``core`` and ``config``.
"""

from scheduler.store._base import Store as Store
from scheduler.store._base import check_event as check_event
from scheduler.store._base import scopes_of as scopes_of
from scheduler.store._memory import MemoryStore as MemoryStore
from scheduler.store._open import open_store as open_store
from scheduler.store._sqlite import SqliteStore as SqliteStore

__all__ = ["MemoryStore", "SqliteStore", "Store", "check_event", "open_store", "scopes_of"]
