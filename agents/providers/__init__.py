"""Model providers: the deterministic simulator (embedded default) and Anthropic."""

from ._simulated import SimulatedProvider as SimulatedProvider

__all__ = ["SimulatedProvider"]
