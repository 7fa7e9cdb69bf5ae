"""Durable stores: the only place that persists (R1.5, R2.6)."""

from ._base import Store as Store
from ._base import scopes_of as scopes_of
from ._memory import MemoryStore as MemoryStore
from ._open import open_store as open_store
from ._sqlite import SqliteStore as SqliteStore

__all__ = ["MemoryStore", "SqliteStore", "Store", "open_store", "scopes_of"]
