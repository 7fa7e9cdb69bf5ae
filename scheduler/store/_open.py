"""Resolve the ``store`` config value to a store instance (R7.4)."""

from __future__ import annotations

import stat
from pathlib import Path

from scheduler.config import DistributedConfig, sqlite_file
from scheduler.core import ConfigError, resolve_object
from scheduler.store._base import Store
from scheduler.store._memory import MemoryStore
from scheduler.store._sqlite import SqliteStore


def open_store(
    name: str, state_dir: Path, *, distributed: DistributedConfig | None = None,
    replay_spool: bool = True,
) -> Store:
    """Build (not yet open) the store named ``name``.

    ``"sqlite"`` (default: ``<state_dir>/vibe.db``), ``"sqlite:///abs/path.db"`` (the
    absolute path after ``sqlite://``, see :func:`scheduler.config.sqlite_file`; its
    shared budget holds lapse after ``distributed.hold_ttl_s``),
    ``"memory"``, ``"redis://host:port/db[?namespace=name]"`` (configured by
    ``distributed``, spooling to ``<state_dir>/redis-spool.jsonl`` while Redis is
    down), or ``"module:Class"`` (called with no arguments).  ``replay_spool=False``
    for a reader beside a running orchestrator (``status``): the Redis spool in
    ``state_dir`` is that orchestrator's to replay.
    """
    if name == "memory":
        return MemoryStore()
    # a SQLite file's budget holds lapse as Redis's do (several processes may share it)
    hold_ttl_s = (distributed or DistributedConfig()).hold_ttl_s
    db = state_dir / "vibe.db" if name == "sqlite" else sqlite_file(name)
    if db is not None:
        if db.exists() and not db.is_file():
            raise ConfigError("store", name, f"{db} is {_kind(db)}, not a SQLite file")
        return SqliteStore(db, hold_ttl_s=hold_ttl_s)
    if name.startswith(("redis://", "rediss://", "unix://")):
        try:
            from scheduler.store._redis import RedisStore
        except ImportError as exc:  # pragma: no cover - redis is a declared dependency
            raise ConfigError("store", name, f"Redis backend unavailable: {exc}") from exc
        cfg = distributed or DistributedConfig()
        spool = cfg.spool_path or state_dir / "redis-spool.jsonl"
        store: Store = RedisStore(name, config=cfg, spool_path=spool, replay=replay_spool)
        return store
    factory = resolve_object(name, field="store", builtins={}, group="vibe_engine.stores")
    if not isinstance(factory, type):
        raise ConfigError("store", name, f"is a {type(factory).__name__}, not a store class")
    try:
        obj = factory()
    except Exception as exc:  # a plugin's constructor may raise anything
        raise ConfigError("store", name, f"cannot be built: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Store):
        raise ConfigError("store", name, "does not implement the Store protocol")
    return obj


def _kind(path: Path) -> str:
    """What a path that is no regular file is: SQLite would write its journal beside a
    device (``/dev/null-journal``) and fail only then, on a folder or a FIFO too."""
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "no regular file"
