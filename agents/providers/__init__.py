"""Model providers: the deterministic simulator (embedded default) and Anthropic."""

from ._anthropic import AnthropicProvider as AnthropicProvider
from ._anthropic import AnthropicStatistics as AnthropicStatistics
from ._anthropic import AttemptHook as AttemptHook
from ._anthropic import RateLimitHook as RateLimitHook
from ._anthropic_wire import ErrorKind as ErrorKind
from ._anthropic_wire import input_pool_tokens as input_pool_tokens
from ._simulated import SimulatedProvider as SimulatedProvider

__all__ = [
    "AnthropicProvider", "AnthropicStatistics", "AttemptHook", "ErrorKind", "RateLimitHook",
    "SimulatedProvider", "input_pool_tokens",
]
