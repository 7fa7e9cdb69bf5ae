"""Durable stores: the only place that persists (R1.5, R2.6).

Owns the ``Store`` protocol and its memory, SQLite and Redis backends, the ledger
protocols (budget holds, quota slices) and the spool.  May import ``core`` and ``config``.
"""

from scheduler.store._base import Store as Store
from scheduler.store._base import check_event as check_event
from scheduler.store._base import latest_day_begun as latest_day_begun
from scheduler.store._base import put_state_if_absent as put_state_if_absent
from scheduler.store._base import record_and_delete_state as record_and_delete_state
from scheduler.store._base import scopes_of as scopes_of
from scheduler.store._base import task_day_scope as task_day_scope
from scheduler.store._memory import MemoryStore as MemoryStore
from scheduler.store._open import open_store as open_store
from scheduler.store._records import SessionRecord as SessionRecord
from scheduler.store._records import latest_session as latest_session
from scheduler.store._records import list_sessions as list_sessions
from scheduler.store._records import session_task_totals as session_task_totals
from scheduler.store._records import task_key as task_key
from scheduler.store._records import task_of_key as task_of_key
from scheduler.store._sqlite import SqliteStore as SqliteStore

__all__ = [
    "MemoryStore", "SessionRecord", "SqliteStore", "Store", "check_event", "latest_day_begun",
    "latest_session",
    "list_sessions", "open_store", "put_state_if_absent", "record_and_delete_state", "scopes_of",
    "session_task_totals", "task_day_scope", "task_key", "task_of_key",
]
