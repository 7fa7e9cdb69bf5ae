"""Building the concrete provider a config asks for."""

from __future__ import annotations

from scheduler import ConfigError, Provider, VibeConfig

from .providers import SimulatedProvider


def make_provider(config: VibeConfig) -> Provider:
    """The provider named by ``config.provider.kind``."""
    kind = config.provider.kind
    if kind == "simulated":
        return SimulatedProvider(config.provider.simulated)
    raise ConfigError("provider.kind", kind, "provider not available in this build")
