"""Which process wrote a record, and whether it still runs.

A record a process leaves in a shared store (a session's, say) names its host, its pid
and its *start*: the boot and the moment the kernel started it
(``<boot id>/<start ticks>`` from ``/proc``, empty where there is no ``/proc``).  A pid
alone is not enough: after a SIGKILL the pid is soon given to another process (and after
a reboot to any), so a record whose pid runs again under another start is the record of
a process that is gone.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from pathlib import Path

__all__ = ["member_gone", "pid_runs", "process_gone", "process_start", "this_host",
           "this_process"]

_PROC = Path("/proc")


def this_host() -> str:
    return socket.gethostname()


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces or parentheses itself
    return text.rpartition(")")[2].split()


def _boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """``<boot id>/<start ticks>`` of process ``pid``; empty when unknown (no ``/proc``,
    or no such process)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return ""
    return f"{_boot_id()}/{fields[19]}"  # field 22 of stat: the start, in clock ticks


def this_process() -> tuple[str, int, str]:
    """This process's ``(host, pid, start)``, as its records name it."""
    return _identity(os.getpid())  # a forked child has its own pid, so its own entry


@functools.lru_cache(maxsize=2)
def _identity(pid: int) -> tuple[str, int, str]:
    return this_host(), pid, process_start(pid)


def pid_runs(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (one killed but not yet reaped does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    fields = _stat_fields(pid)
    return not (fields and fields[0] in ("Z", "X"))  # killed, not yet reaped: gone


def process_gone(host: str, pid: int, start: str) -> bool:
    """True when the process ``pid`` of ``host`` that started at ``start`` is known to
    have ended: same host, and its pid runs no more or runs a process started at another
    moment (the pid was reused).  Another host's process, or a record naming no host or
    pid (written before records did), is not known to be gone."""
    if not host or pid <= 0 or host != this_host():
        return False
    if not pid_runs(pid):
        return True
    if not start:
        return False
    now = process_start(pid)
    return bool(now) and now != start


def member_gone(member: Sequence[object]) -> bool:
    """:func:`process_gone` of a record's ``[host, pid, proc_start]``; an entry of
    another shape (hand-edited) is not known to be gone."""
    try:
        host, pid, start = member
        return process_gone(str(host), int(str(pid)), str(start))
    except (TypeError, ValueError):
        return False
