"""Building the concrete provider a config asks for."""

from __future__ import annotations

from agents.providers import AnthropicProvider, SimulatedProvider
from scheduler import ConfigError, Provider, VibeConfig
from scheduler.observe import tracing_wanted


def make_provider(config: VibeConfig) -> Provider:
    """The provider named by ``config.provider.kind``.

    ``anthropic`` needs the API key in the environment variable named by
    ``provider.api_key_env`` (``ANTHROPIC_API_KEY``); ``provider.base_url`` may
    point it at the fake API (``vibe-engine fake-api``).
    """
    kind = config.provider.kind
    if kind == "simulated":
        return SimulatedProvider(config.provider.simulated)
    if kind == "anthropic":
        # the SDK's own spans stay on when the run traces (see AnthropicProvider)
        return AnthropicProvider(config.provider,
                                 sdk_spans=tracing_wanted(config.tracing.enabled))
    raise ConfigError("provider.kind", kind, "provider not available in this build")
