"""Test doubles for the runtime: virtual time, scripted providers, fixed wall clocks.

Owns what tests and plugin authors need to run agents and policies exactly and
fast: coroutines on trio's ``MockClock`` (autojump), a provider that answers
from a script, and an orchestrator built on those.  Top layer: may import
anything in ``scheduler`` and ``agents``; nothing in the runtime imports it.
"""

from scheduler.core import FixedWallClock as FixedWallClock
from scheduler.testing._orchestrator import FRIDAY as FRIDAY
from scheduler.testing._orchestrator import build_orchestrator as build_orchestrator
from scheduler.testing._providers import InstantProvider as InstantProvider
from scheduler.testing._providers import ScriptedProvider as ScriptedProvider
from scheduler.testing._virtual import run_real as run_real
from scheduler.testing._virtual import run_virtual as run_virtual
from scheduler.testing._virtual import virtual_backend as virtual_backend

__all__ = [
    "FRIDAY",
    "FixedWallClock",
    "InstantProvider",
    "ScriptedProvider",
    "build_orchestrator",
    "run_real",
    "run_virtual",
    "virtual_backend",
]
