"""A fake Anthropic Messages API over real HTTP on 127.0.0.1 (tests, demo, ``fake-api``)."""

from agents.fake_api._model import FakeApiConfig as FakeApiConfig
from agents.fake_api._model import Fault as Fault
from agents.fake_api._model import FaultKind as FaultKind
from agents.fake_api._model import Reported as Reported
from agents.fake_api._server import FakeAnthropicServer as FakeAnthropicServer
from agents.fake_api._server import open_fake_api as open_fake_api

__all__ = [
    "FakeAnthropicServer", "FakeApiConfig", "Fault", "FaultKind", "Reported", "open_fake_api",
]
