"""The vocabulary every part speaks: errors, clocks, events, usage, the provider protocol.

Owns the exception tree, wall clocks, the event bus and hooks, the library's loggers,
usage records and cost, the provider protocol and name resolution.  May import nothing else from
``scheduler`` (the lowest layer).
"""

from scheduler.core._cancel import AsyncioCancelScope as AsyncioCancelScope
from scheduler.core._cancel import shield as shield
from scheduler.core._cancel import until as until
from scheduler.core._clock import FixedWallClock as FixedWallClock
from scheduler.core._clock import SystemWallClock as SystemWallClock
from scheduler.core._clock import WallClock as WallClock
from scheduler.core._clock import loop_time as loop_time
from scheduler.core._errors import AllocationError as AllocationError
from scheduler.core._errors import BudgetError as BudgetError
from scheduler.core._errors import BudgetExceededError as BudgetExceededError
from scheduler.core._errors import ConfigError as ConfigError
from scheduler.core._errors import DecisionError as DecisionError
from scheduler.core._errors import FinishRequestedError as FinishRequestedError
from scheduler.core._errors import InvalidArgumentError as InvalidArgumentError
from scheduler.core._errors import LeaseError as LeaseError
from scheduler.core._errors import LocalFileError as LocalFileError
from scheduler.core._errors import ModelUnavailableError as ModelUnavailableError
from scheduler.core._errors import OverdraftDeniedError as OverdraftDeniedError
from scheduler.core._errors import OverloadedError as OverloadedError
from scheduler.core._errors import PluginError as PluginError
from scheduler.core._errors import ProviderError as ProviderError
from scheduler.core._errors import ProviderTimeoutError as ProviderTimeoutError
from scheduler.core._errors import RateLimitedError as RateLimitedError
from scheduler.core._errors import ResultError as ResultError
from scheduler.core._errors import SessionError as SessionError
from scheduler.core._errors import SpendLimitError as SpendLimitError
from scheduler.core._errors import StoreError as StoreError
from scheduler.core._errors import StoreUnavailableError as StoreUnavailableError
from scheduler.core._errors import TaskAbortedError as TaskAbortedError
from scheduler.core._errors import VibeEngineError as VibeEngineError
from scheduler.core._errors import WouldBlockError as WouldBlockError
from scheduler.core._events import Event as Event
from scheduler.core._events import EventBus as EventBus
from scheduler.core._files import make_private_dir as make_private_dir
from scheduler.core._files import open_private as open_private
from scheduler.core._files import private_dir as private_dir
from scheduler.core._files import private_file as private_file
from scheduler.core._files import private_mode as private_mode
from scheduler.core._files import remove_file as remove_file
from scheduler.core._files import umask_keeps_owner as umask_keeps_owner
from scheduler.core._files import write_private as write_private
from scheduler.core._group import GroupCommit as GroupCommit
from scheduler.core._hooks import AsyncHook as AsyncHook
from scheduler.core._hooks import Hook as Hook
from scheduler.core._log import LibraryLogger as LibraryLogger
from scheduler.core._log import get_logger as get_logger
from scheduler.core._process import member_gone as member_gone
from scheduler.core._process import pid_runs as pid_runs
from scheduler.core._process import process_gone as process_gone
from scheduler.core._process import process_start as process_start
from scheduler.core._process import this_host as this_host
from scheduler.core._process import this_process as this_process
from scheduler.core._provider import REQUEST_OPTIONS as REQUEST_OPTIONS
from scheduler.core._provider import Completion as Completion
from scheduler.core._provider import CompletionRequest as CompletionRequest
from scheduler.core._provider import ContentBlock as ContentBlock
from scheduler.core._provider import Message as Message
from scheduler.core._provider import Passthrough as Passthrough
from scheduler.core._provider import Provider as Provider
from scheduler.core._provider import RateLimitInfo as RateLimitInfo
from scheduler.core._provider import ReportsRateLimits as ReportsRateLimits
from scheduler.core._provider import TextSink as TextSink
from scheduler.core._provider import check_options as check_options
from scheduler.core._provider import thinking_budget as thinking_budget
from scheduler.core._resolve import resolve_object as resolve_object
from scheduler.core._threads import off_loop as off_loop
from scheduler.core._threads import on_asyncio as on_asyncio
from scheduler.core._usage import Totals as Totals
from scheduler.core._usage import Usage as Usage
from scheduler.core._usage import UsageEvent as UsageEvent
from scheduler.core._usage import cost_usd as cost_usd

__all__ = [
    "REQUEST_OPTIONS",
    "AllocationError",
    "AsyncHook",
    "AsyncioCancelScope",
    "BudgetError",
    "BudgetExceededError",
    "Completion",
    "CompletionRequest",
    "ConfigError",
    "ContentBlock",
    "DecisionError",
    "Event",
    "EventBus",
    "FinishRequestedError",
    "FixedWallClock",
    "GroupCommit",
    "Hook",
    "InvalidArgumentError",
    "LeaseError",
    "LibraryLogger",
    "LocalFileError",
    "Message",
    "ModelUnavailableError",
    "OverdraftDeniedError",
    "OverloadedError",
    "Passthrough",
    "PluginError",
    "Provider",
    "ProviderError",
    "ProviderTimeoutError",
    "RateLimitInfo",
    "RateLimitedError",
    "ReportsRateLimits",
    "ResultError",
    "SessionError",
    "SpendLimitError",
    "StoreError",
    "StoreUnavailableError",
    "SystemWallClock",
    "TaskAbortedError",
    "TextSink",
    "Totals",
    "Usage",
    "UsageEvent",
    "VibeEngineError",
    "WallClock",
    "WouldBlockError",
    "check_options",
    "cost_usd",
    "get_logger",
    "loop_time",
    "make_private_dir",
    "member_gone",
    "off_loop",
    "on_asyncio",
    "open_private",
    "pid_runs",
    "private_dir",
    "private_file",
    "private_mode",
    "process_gone",
    "process_start",
    "remove_file",
    "resolve_object",
    "shield",
    "thinking_budget",
    "this_host",
    "this_process",
    "umask_keeps_owner",
    "until",
    "write_private",
]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
