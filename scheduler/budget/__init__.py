"""Budgets: task profiles, token estimates and the live tracker of nested scopes (R1, R2).

Owns task-type and complexity detection, tiktoken estimates, and the tracker that
charges usage to task ⊂ session ⊂ day scopes.  May import ``core``, ``config`` and ``store``.
"""

from scheduler.budget._profile import TaskProfile as TaskProfile
from scheduler.budget._profile import day_limits as day_limits
from scheduler.budget._profile import detect_complexity as detect_complexity
from scheduler.budget._profile import detect_task_type as detect_task_type
from scheduler.budget._profile import resolve_task as resolve_task
from scheduler.budget._reservations import Reservation as Reservation
from scheduler.budget._scope_state import Crossing as Crossing
from scheduler.budget._scope_state import Level as Level
from scheduler.budget._scope_state import ScopeState as ScopeState
from scheduler.budget._tokens import CACHE_WRITE_1H as CACHE_WRITE_1H
from scheduler.budget._tokens import CACHE_WRITE_5M as CACHE_WRITE_5M
from scheduler.budget._tokens import IMAGE_TOKENS as IMAGE_TOKENS
from scheduler.budget._tokens import NO_CACHE_WRITE as NO_CACHE_WRITE
from scheduler.budget._tokens import PDF_PAGE_TOKENS as PDF_PAGE_TOKENS
from scheduler.budget._tokens import Estimate as Estimate
from scheduler.budget._tokens import Reconciliation as Reconciliation
from scheduler.budget._tokens import TokenCounter as TokenCounter
from scheduler.budget._tracker import Remaining as Remaining
from scheduler.budget._tracker import Tracker as Tracker
from scheduler.budget._usage_files import read_usage_file as read_usage_file

__all__ = [
    "CACHE_WRITE_1H",
    "CACHE_WRITE_5M",
    "IMAGE_TOKENS",
    "NO_CACHE_WRITE",
    "PDF_PAGE_TOKENS",
    "Crossing",
    "Estimate",
    "Level",
    "Reconciliation",
    "Remaining",
    "Reservation",
    "ScopeState",
    "TaskProfile",
    "TokenCounter",
    "Tracker",
    "day_limits",
    "detect_complexity",
    "detect_task_type",
    "read_usage_file",
    "resolve_task",
]
