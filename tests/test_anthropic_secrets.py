"""The API key never appears in logs, reprs or errors (DESIGN.md "Observability")."""

from __future__ import annotations

import logging

import pytest

from agents.fake_api import FakeAnthropicServer, Fault
from agents.providers import AnthropicProvider
from scheduler import ConfigError, ProviderError
from scheduler.config import ProviderConfig
from scheduler.observe import configure_logging
from tests._anthropic_helpers import SECRET_KEY, fake_api, provider_for, request

# the fake Anthropic API is a real HTTP server: its sockets need real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
__all__ = ["fake_api"]


async def test_api_key_never_in_captured_logs(
    fake_api: FakeAnthropicServer, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """structlog JSON at debug level and the SDK's own stdlib loggers at DEBUG, through
    successes, retried 429/529/dropped streams and a spend limit: no trace of the key."""
    configure_logging(level="debug", json_logs=True)
    caplog.set_level(logging.DEBUG)
    fake_api.inject(Fault("rate_limit", retry_after=0.01))
    fake_api.inject(Fault("overloaded"))
    fake_api.inject(Fault("drop_stream"))
    provider = provider_for(fake_api, max_retries=3)
    errors: list[str] = []
    try:
        await provider.complete(request(stream=True))
        await provider.complete(request())
        fake_api.inject(Fault("spend_limit"))
        with pytest.raises(ProviderError) as info:
            await provider.complete(request())
        errors += [str(info.value), repr(info.value), str(info.value.__cause__)]
        errors.append(repr(provider))
    finally:
        await provider.aclose()
    err = capsys.readouterr().err
    assert "anthropic_attempt_failed" in err  # the structlog output was captured
    assert any(r.name.startswith("anthropic") for r in caplog.records)  # and the SDK's
    for text in (err, caplog.text, *errors):
        assert SECRET_KEY not in text
        assert SECRET_KEY[-12:] not in text


def test_missing_key_names_the_variable_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIBE_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        AnthropicProvider(ProviderConfig(kind="anthropic", api_key_env="VIBE_NO_SUCH_KEY"))
    assert info.value.field == "provider.api_key_env"
    assert "VIBE_NO_SUCH_KEY" in str(info.value)


async def test_wrong_key_is_a_client_error_without_the_key(
    fake_api: FakeAnthropicServer,
) -> None:
    wrong = "sk-ant-api03-WRONGKEY-000111"
    provider = AnthropicProvider(
        ProviderConfig(kind="anthropic", base_url=fake_api.base_url), api_key=wrong
    )
    try:
        with pytest.raises(ProviderError) as info:
            await provider.complete(request())
    finally:
        await provider.aclose()
    assert info.value.status == 401
    assert wrong not in str(info.value) and wrong not in str(info.value.__cause__)
    assert fake_api.requests == 0  # rejected at authentication, before any model work
