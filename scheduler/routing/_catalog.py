"""The model catalog: named models, their Anthropic ids, prices and windows.

Built from :attr:`VibeConfig.models` and :attr:`VibeConfig.task_types`.  The
models with a ``rank`` are the tiers the router chooses among, ordered by rank,
cheapest/weakest first (haiku < sonnet < opus by default, R4.1); the others are
used when an agent names them.  Each task type names a preferred model and a
fallback (R6.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scheduler.config import VibeConfig
from scheduler.core import ConfigError


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One tier of the catalog."""

    tier: str
    rank: int
    model_id: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    context_window: int


class ModelCatalog:
    """Tier order, prices and per-task-type preferences, read once from the config."""

    def __init__(self, config: VibeConfig) -> None:
        ranked = [(spec.rank, name) for name, spec in config.models.items()
                  if spec.rank is not None]
        self.tiers: tuple[str, ...] = tuple(name for _, name in sorted(ranked))
        # models without a rank sit after the tiers: named by agents, never routed to
        order = [*self.tiers, *(n for n in config.models if n not in self.tiers)]
        self._entries = {
            name: CatalogEntry(
                name, rank, spec.model_id, spec.input_usd_per_mtok, spec.output_usd_per_mtok,
                spec.context_window,
            )
            for rank, name in enumerate(order)
            for spec in (config.models[name],)
        }
        self._preferred = {name: row.preferred_model for name, row in config.task_types.items()}
        self._fallback = {name: row.fallback_model for name, row in config.task_types.items()}

    # -- tiers -------------------------------------------------------------------------
    def entry(self, tier: str) -> CatalogEntry:
        try:
            return self._entries[tier]
        except KeyError:
            raise ConfigError("models", tier, f"unknown model; known: {list(self.tiers)}") from None

    def rank(self, tier: str) -> int:
        """0 for the cheapest tier, len(tiers) - 1 for the strongest."""
        return self.entry(tier).rank

    def up(self, tier: str) -> str | None:
        """The next stronger tier, or None at the top (or for a model outside the tiers)."""
        if tier not in self.tiers:
            return None
        r = self.rank(tier)
        return self.tiers[r + 1] if r + 1 < len(self.tiers) else None

    @property
    def cheapest(self) -> str:
        return self.tiers[0]

    @property
    def strongest(self) -> str:
        return self.tiers[-1]

    # -- task types (R6.1) -------------------------------------------------------------
    def preferred(self, task_type: str) -> str | None:
        return self._preferred.get(task_type)  # type: ignore[call-overload, no-any-return]

    def task_fallback(self, task_type: str) -> str | None:
        return self._fallback.get(task_type)  # type: ignore[call-overload, no-any-return]

    def substitutes(self, tier: str, task_type: str | None = None) -> list[str]:
        """Where work for ``tier`` goes when it is unavailable, best first.

        The task type's fallback when ``tier`` is that type's preferred model,
        then the next tiers down (cheaper, less capable), then the tiers up.
        """
        order: list[str] = []
        if tier not in self.tiers:  # a model named by an agent: no substitute is implied
            return order
        if task_type is not None and self.preferred(task_type) == tier:
            fb = self.task_fallback(task_type)
            if fb and fb != tier:
                order.append(fb)
        r = self.rank(tier)
        order += [t for t in reversed(self.tiers[:r]) if t not in order]
        order += [t for t in self.tiers[r + 1:] if t not in order]
        return order

    def first_usable(self, candidates: Iterable[str], usable: Iterable[str]) -> str | None:
        allowed = set(usable)
        return next((t for t in candidates if t in allowed), None)
