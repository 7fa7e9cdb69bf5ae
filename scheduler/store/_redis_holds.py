"""The budget holds of killed processes on Redis, freed as soon as they are in the way.

A hold names its process (``holder``: host, pid and the pid's start time).  A process
SIGKILLed mid-call leaves its holds until ``hold_ttl_s`` (10 minutes by default) -- and
the next start charges that call's ``open_call`` record at its estimate, so the call
would count twice against every budget it held, refusing calls there is room for.  A
refused hold therefore frees the holds of this host's processes that are provably gone
and have no call left open (as the SQLite store does), then is tried once more.
Another host's holds are left to expire: a pid says nothing here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from typing import cast

from scheduler.core import get_logger, process_gone, process_start, this_host
from scheduler.store._base import OPEN_CALL
from scheduler.store._redis_conn import RedisConnection

_log = get_logger("vibe_engine.store.redis")
_HOLDER: dict[int, str] = {}


def holder() -> str:
    """This process as a hold's owner: ``host pid start`` (computed once per pid)."""
    pid = os.getpid()
    if pid not in _HOLDER:
        _HOLDER[pid] = f"{this_host()}\t{pid}\t{process_start(pid)}"
    return _HOLDER[pid]


def _gone(owner: str) -> bool:
    host, _, rest = owner.partition("\t")
    pid, _, start = rest.partition("\t")
    return pid.isdigit() and process_gone(host, int(pid), start)


def _host_pid(owner: str) -> tuple[str, str]:
    host, _, rest = owner.partition("\t")
    return host, rest.partition("\t")[0]


def _open_call_processes(records: Sequence[bytes | str]) -> set[tuple[str, str]]:
    """The (host, pid) of the processes of the ``open_call`` records ``records``."""
    out: set[tuple[str, str]] = set()
    for raw in records:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            value = json.loads(raw)
            out.add((str(value["host"]), str(value["pid"])))
    return out


async def prune_dead_holds(link: RedisConnection, key: Callable[..., str],
                           scopes: Sequence[str]) -> bool:
    """Release, in ``scopes``, the holds of this host's processes that are gone; whether
    any were.  Only called on a refusal, so a hold granted never pays for the scan."""
    owners: dict[str, str] = {}
    for scope in scopes:
        amounts = cast(dict[str, str], await link.client.hgetall(key("amts", scope)))
        owners.update((field[:-2], owner) for field, owner in amounts.items()
                      if field.endswith("|p") and _gone(owner))
    if not owners:
        return False
    # a process with calls left open keeps its holds until a recovery round charges
    # them at their estimate (as on SQLite): freed before, their budget is spent twice
    opened = _open_call_processes(await link.client.hvals(key("state", OPEN_CALL)))
    dead = {hold for hold, owner in owners.items() if _host_pid(owner) not in opened}
    hold_keys = [k for s in scopes for k in (key("holds", s), key("amts", s))]
    for hold_id in sorted(dead):
        await link.script("release", hold_keys, [hold_id])
    if dead:
        _log.warning("redis_dead_holds_released", holds=len(dead), scopes=list(scopes))
    return bool(dead)
