"""Agents as entry-point plugins; policies and stores named in config (R7.3, R7.4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import check_agent_class, discover_agents, plugin_infos
from agents.builtin import CoderAgent
from scheduler import ConfigError, PluginError
from scheduler.core import resolve_object
from scheduler.store import MemoryStore, SqliteStore, open_store


def test_r7_3_builtin_agents_registered_through_entry_points() -> None:
    """R7.3: agents come from the vibe_engine.agents entry-point group."""
    agents = discover_agents()
    assert {"coder", "qa", "refactor"} <= set(agents)
    assert agents["coder"] is CoderAgent
    info = {p.name: p for p in plugin_infos()}
    assert info["coder"].distribution == "vibe-engine"
    assert info["coder"].target == "agents.builtin:CoderAgent"


def test_r7_3_invalid_plugins_named_in_the_error() -> None:
    """R7.3: a plugin is checked when registered, and the error names it."""

    class NoRun:
        pass

    class SyncRun:
        def run(self, ctx: object) -> None:
            return None

    with pytest.raises(PluginError, match=r"'bad'.*no run"):
        check_agent_class("bad", NoRun)
    with pytest.raises(PluginError, match=r"'sync'.*async def"):
        check_agent_class("sync", SyncRun)
    with pytest.raises(PluginError, match="not a class"):
        check_agent_class("num", 3)


def test_r7_4_policies_resolved_by_import_string() -> None:
    """R7.4: a policy named as module:Class is resolved once; unknown names list what exists."""
    assert resolve_object("scheduler.store:MemoryStore", field="store", builtins={}) is MemoryStore
    assert resolve_object("fast", field="x", builtins={"fast": int}) is int
    with pytest.raises(ConfigError, match="available: fast, slow") as info:
        resolve_object("medium", field="policies.allocation",
                       builtins={"fast": int, "slow": str})
    assert info.value.field == "policies.allocation"
    with pytest.raises(ConfigError, match="cannot import module"):
        resolve_object("no_such_mod:X", field="x", builtins={})
    with pytest.raises(ConfigError, match="has no attribute"):
        resolve_object("scheduler.store:Nope", field="x", builtins={})


def test_r7_4_store_named_in_config(tmp_path: Path) -> None:
    """R7.4: stores are named in config: sqlite (default), memory, a path, module:Class."""
    assert isinstance(open_store("memory", tmp_path), MemoryStore)
    s = open_store("sqlite", tmp_path)
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "vibe.db"
    s2 = open_store(f"sqlite:///{tmp_path}/other.db", tmp_path)
    assert isinstance(s2, SqliteStore) and s2.path == tmp_path / "other.db"
    assert isinstance(open_store("scheduler.store:MemoryStore", tmp_path), MemoryStore)
    with pytest.raises(ConfigError, match="Store protocol"):
        open_store("builtins:dict", tmp_path)
