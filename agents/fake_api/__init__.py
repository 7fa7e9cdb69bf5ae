"""A fake Anthropic Messages API over real HTTP on 127.0.0.1 (tests, demo, ``fake-api``)."""

from agents.fake_api._model import FakeApiConfig as FakeApiConfig
from agents.fake_api._model import Fault as Fault
from agents.fake_api._model import FaultKind as FaultKind
from agents.fake_api._model import Reported as Reported
from agents.fake_api._script import SERVED_MODELS as SERVED_MODELS
from agents.fake_api._script import load_script as load_script
from agents.fake_api._script import stream_events as stream_events
from agents.fake_api._server import FakeAnthropicServer as FakeAnthropicServer
from agents.fake_api._server import open_fake_api as open_fake_api

__all__ = [
    "SERVED_MODELS", "FakeAnthropicServer", "FakeApiConfig", "Fault", "FaultKind", "Reported",
    "load_script", "open_fake_api", "stream_events",
]
