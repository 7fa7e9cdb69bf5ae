"""An orchestrator wired for tests: memory store, scripted provider, a fixed day."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

from scheduler.config import VibeConfig
from scheduler.core import FixedWallClock, Provider, WallClock
from scheduler.runtime import Orchestrator
from scheduler.store import Store
from scheduler.testing._providers import ScriptedProvider

FRIDAY = date(2026, 11, 27)
"""The default wall-clock day: a weekday, so weekday day budgets apply."""


def build_orchestrator(
    agents: Mapping[str, Callable[[], Any]],
    *,
    config: VibeConfig | None = None,
    state_dir: Path | None = None,
    provider: Provider | None = None,
    store: Store | None = None,
    wall: WallClock | None = None,
    **settings: Any,
) -> Orchestrator:
    """An :class:`Orchestrator` whose run is reproducible.

    Without ``config``, the config is a memory store under ``state_dir``, session
    ``s1``, and ``settings`` as further config fields.  The provider defaults to
    a :class:`ScriptedProvider`; the wall clock is fixed at noon UTC on
    :data:`FRIDAY`.
    """
    if config is None:
        if state_dir is None:
            raise TypeError("build_orchestrator needs a config or a state_dir")
        fields = {"state_dir": state_dir, "store": "memory", "session_id": "s1", **settings}
        config = VibeConfig.model_validate(fields)
    elif settings or state_dir is not None:
        raise TypeError("pass a config or state_dir and settings, not both")
    return Orchestrator(
        config, provider=ScriptedProvider() if provider is None else provider,
        agents=agents, store=store, wall=FixedWallClock(FRIDAY) if wall is None else wall,
    )
