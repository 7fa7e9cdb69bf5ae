"""A fake Anthropic Messages API over real HTTP on 127.0.0.1 (tests, demo, ``fake-api``)."""

from ._model import FakeApiConfig as FakeApiConfig
from ._model import Fault as Fault
from ._model import FaultKind as FaultKind
from ._model import Reported as Reported
from ._server import FakeAnthropicServer as FakeAnthropicServer
from ._server import open_fake_api as open_fake_api

__all__ = [
    "FakeAnthropicServer", "FakeApiConfig", "Fault", "FaultKind", "Reported", "open_fake_api",
]
