"""The vocabulary every part speaks: errors, clocks, events, usage, the provider protocol.

Owns the exception tree, wall clocks, the event bus and hooks, usage records and
cost, the provider protocol and name resolution.  Imports nothing else from
``scheduler`` (layer 0).
"""

from scheduler.core._clock import FixedWallClock as FixedWallClock
from scheduler.core._clock import SystemWallClock as SystemWallClock
from scheduler.core._clock import WallClock as WallClock
from scheduler.core._events import Event as Event
from scheduler.core._events import EventBus as EventBus
from scheduler.core._hooks import AsyncHook as AsyncHook
from scheduler.core._hooks import Hook as Hook
from scheduler.core._provider import Completion as Completion
from scheduler.core._provider import CompletionRequest as CompletionRequest
from scheduler.core._provider import Message as Message
from scheduler.core._provider import Provider as Provider
from scheduler.core._provider import RateLimitInfo as RateLimitInfo
from scheduler.core._provider import ReportsRateLimits as ReportsRateLimits
from scheduler.core._resolve import resolve_object as resolve_object
from scheduler.core._usage import Totals as Totals
from scheduler.core._usage import Usage as Usage
from scheduler.core._usage import UsageEvent as UsageEvent
from scheduler.core._usage import cost_usd as cost_usd

__all__ = [
    "AsyncHook", "Completion", "CompletionRequest", "Event", "EventBus", "FixedWallClock", "Hook",
    "Message", "Provider", "RateLimitInfo", "ReportsRateLimits", "SystemWallClock", "Totals",
    "Usage", "UsageEvent", "WallClock", "cost_usd", "resolve_object",
]
