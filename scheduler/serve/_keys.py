"""Client keys: who is calling, and the task each key's requests run as (#21).

Each ``[[serve.keys]]`` entry becomes a task of the serve run whose budget is the
key's (counted over every session in the store, so restarts and replicas share it,
R1.2), whose priority class is the key's (R5.1) and whose ``on_limit`` is ``pause``
for ``hold`` keys (R3.4) and ``reject`` otherwise.  Presented keys are compared as
SHA-256 digests in constant time; the clear key is never kept.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from scheduler.config import Limits, ServeConfig, ServeKey, TaskSpec, api_key_problem
from scheduler.core import ConfigError


def agent_name(key: str) -> str:
    """The agent a key's task runs as: the outside agent behind the key, so reports
    (per agent), status and usage files show proxied traffic per key."""
    return f"serve:{key}"


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A configured key and the SHA-256 digest its clients must present."""

    config: ServeKey
    digest: bytes

    @property
    def name(self) -> str:
        return self.config.name


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured client keys, ready to authenticate requests."""

    def __init__(self, serve: ServeConfig, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._entries: list[KeyEntry] = []
        #: Keys minted by :meth:`issue` (in-process clients): found, never counted.
        self._issued: list[KeyEntry] = []
        for i, key in enumerate(serve.keys):
            if key.key_env is not None:
                value = env.get(key.key_env, "")
                problem = (key_problem(value) if value
                           else "environment variable is not set (or empty)")
                if problem is not None:
                    raise ConfigError(f"serve.keys.{i}.key_env", key.key_env, problem)
                entry = KeyEntry(key, digest(value))
            else:
                entry = KeyEntry(key, bytes.fromhex(key.key_sha256 or ""))
            self._refuse_twice(i, entry)
            self._entries.append(entry)

    def _refuse_twice(self, i: int, entry: KeyEntry) -> None:
        """Two entries with one secret (a copied entry's ``key_env``): a request could not
        tell them apart, and one entry's budget would silently never be used."""
        for j, earlier in enumerate(self._entries):
            if hmac.compare_digest(earlier.digest, entry.digest):
                field = "key_env" if entry.config.key_env is not None else "key_sha256"
                raise ConfigError(f"serve.keys.{i}.{field}",
                                  getattr(entry.config, field),
                                  f"the same client key as serve.keys.{j} "
                                  f"({earlier.name!r}); give each key its own")

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[KeyEntry]:
        return list(self._entries)

    def find(self, presented: str | None) -> KeyEntry | None:
        """The key ``presented`` is, or None; every entry is compared (constant time)."""
        if not presented:
            return None
        wanted = digest(presented)
        found = None
        for entry in (*self._entries, *self._issued):
            if hmac.compare_digest(entry.digest, wanted):
                found = entry
        return found

    def issue(self, name: str) -> str:
        """A fresh random key for the configured key ``name``: the in-process client's
        (#21), so a key stored only hashed can be used too; it lives in memory only."""
        for entry in self._entries:
            if entry.name == name:
                token = "vibe-inproc-" + secrets.token_urlsafe(32)
                self._issued.append(KeyEntry(entry.config, digest(token)))
                return token
        names = ", ".join(e.name for e in self._entries)
        raise ConfigError("key", name, f"no [[serve.keys]] entry has this name (keys: {names})")


#: Why a value cannot be an API key (the same check as ``run``'s provider key).
key_problem = api_key_problem


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The client's key: ``x-api-key``, else ``Authorization: Bearer …``."""
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization") or ""
    scheme, _, token = auth.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def key_limits(budget: Limits) -> Limits:
    """The key's budget and nothing else: every other task default (wall time, per-call
    time, file edits …) is explicitly off, since a key's task lives as long as the server."""
    data = {name: None for name in Limits.model_fields if name != "tokens_by_model"}
    data.update({name: getattr(budget, name) for name in budget.model_fields_set})
    return Limits(**data)


#: The request header naming the task a client's call belongs to.
TASK_HEADER = "x-vibe-task"
_TASK_NAME = re.compile(r"[A-Za-z0-9_.\-]+")  # a task id's characters (TaskSpec.id)
MAX_TASK_ID = 128  # a task id's length limit (TaskSpec.id)


def task_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a grouped task (the task id rules), or None."""
    if len(name) > MAX_TASK_ID:
        return f"at most {MAX_TASK_ID} characters"
    if not _TASK_NAME.fullmatch(name) or not name.strip("."):
        return "letters, digits, '_', '.', '-' only (not only dots)"
    return None


def group_template(key: ServeKey) -> TaskSpec:
    """What every task ``KEY/NAME`` of ``key`` shares (see :func:`group_spec`): the key's
    agent, priority, routing and on_limit, and the key's ``task_budget`` -- made once per
    key, so its tasks share one budget object rather than holding a copy each."""
    return task_spec(key).model_copy(update={
        "budget": key_limits(key.task_budget or Limits()),
        "day_budget": None,  # its use counts toward the key's day (the parent's)
    })


def group_id(key: str, name: str) -> str:
    """The id of key ``key``'s task grouped under ``name`` (checked by
    :func:`task_name_problem`): two path-safe parts joined by '/', which the task id
    pattern does not allow, so it names no configured task."""
    return f"{key}/{name}"


def group_spec(template: TaskSpec, key: str, name: str) -> TaskSpec:
    """The task ``KEY/NAME`` a client's calls run as when they carry ``x-vibe-task: NAME``:
    ``template`` (:func:`group_template` of the key) under its own id.  Its prompt is the
    key's: the router assesses every task of a key alike (a client's name for a task does
    not pick its model), once for them all rather than once per name."""
    return template.model_copy(update={"id": group_id(key, name)})


def task_spec(key: ServeKey) -> TaskSpec:
    """The task a key's requests run as."""
    return TaskSpec(
        id=key.name, agent=agent_name(key.name), prompt=f"requests of serve key {key.name}",
        task_type=key.task_type, complexity=key.complexity, priority=key.priority,
        budget=key_limits(key.budget), on_limit="pause" if key.on_limit == "hold" else "reject",
        budget_span="store", day_budget=key.day_budget,
    )
