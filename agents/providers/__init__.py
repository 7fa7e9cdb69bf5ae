"""Model providers: the deterministic simulator (embedded default) and Anthropic."""

from agents.providers._anthropic import AnthropicProvider as AnthropicProvider
from agents.providers._anthropic import AnthropicStatistics as AnthropicStatistics
from agents.providers._anthropic import AttemptHook as AttemptHook
from agents.providers._anthropic import RateLimitHook as RateLimitHook
from agents.providers._anthropic_wire import ErrorKind as ErrorKind
from agents.providers._anthropic_wire import input_pool_tokens as input_pool_tokens
from agents.providers._simulated import SimulatedProvider as SimulatedProvider

__all__ = [
    "AnthropicProvider", "AnthropicStatistics", "AttemptHook", "ErrorKind", "RateLimitHook",
    "SimulatedProvider", "input_pool_tokens",
]
