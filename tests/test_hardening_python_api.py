"""R7.2: what ``vibe-engine run`` and ``serve`` refuse at start is refused too when the
provider, the webhook notifier or the orchestrator is built from Python: one
:class:`ConfigError` naming the field, never the secret, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import make_provider
from agents.providers import AnthropicProvider, SimulatedProvider
from scheduler import ConfigError, config_from_dict
from scheduler.config import AlertsConfig, ProviderConfig, WebhookConfig
from scheduler.control._webhooks import Webhooks, WebhookSender
from scheduler.runtime import Orchestrator
from scheduler.serve._upstream import UpstreamProvider

HOSTILE_KEYS = ["sk-ant-abc\n", "sk-ant abc", "sk-ant-\x1b[31mabc", "sk-\x7f"]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_r7_2_anthropic_provider_refuses_a_key_no_header_can_carry(
    monkeypatch: pytest.MonkeyPatch, key: str,
) -> None:
    """Given as ``api_key=`` or read from ``provider.api_key_env`` (also through
    ``make_provider``, what an Orchestrator built from Python is handed)."""
    with pytest.raises(ConfigError) as given:
        AnthropicProvider(ProviderConfig(kind="anthropic"), api_key=key)
    assert given.value.field == "api_key" and "abc" not in str(given.value)
    monkeypatch.setenv("VIBE_TEST_PY_KEY", key)
    config = config_from_dict({"provider": {"kind": "anthropic",
                                            "api_key_env": "VIBE_TEST_PY_KEY"}})
    with pytest.raises(ConfigError) as from_env:
        make_provider(config)
    assert from_env.value.field == "provider.api_key_env"
    assert "VIBE_TEST_PY_KEY" in str(from_env.value) and "abc" not in str(from_env.value)


def test_r7_2_anthropic_provider_refuses_a_base_url_that_is_not_one() -> None:
    """A config made without validation (``model_construct``) is checked all the same."""
    config = ProviderConfig.model_construct(kind="anthropic", base_url="127.0.0.1:8080")
    with pytest.raises(ConfigError) as info:
        AnthropicProvider(config, api_key="sk-ant-fine")
    assert info.value.field == "provider.base_url"


@pytest.mark.parametrize(("env", "field"), [
    ({"VIBE_TEST_HOOK_URL": "hooks.example.com/x"}, "alerts.webhooks[0].url_env"),
    ({"VIBE_TEST_HOOK_URL": "https://hooks.example.com/x\n"}, "alerts.webhooks[0].url_env"),
    ({"VIBE_TEST_HOOK_URL": "https://hooks.example.com/x", "VIBE_TEST_HOOK_AUTH": "Bearer\r\nX: 1"},
     "alerts.webhooks[0].headers.Authorization"),
])
def test_r7_2_orchestrator_from_python_refuses_webhook_secrets_no_request_carries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str,
) -> None:
    """The Orchestrator reads its webhooks' URL and headers from the environment when
    built: one error naming the field (not the value), before anything is written."""
    monkeypatch.setenv("VIBE_TEST_HOOK_AUTH", "Bearer-token")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = config_from_dict({
        "state_dir": str(tmp_path / "st"), "store": "sqlite",
        "alerts": {"webhooks": [{"url_env": "VIBE_TEST_HOOK_URL",
                                 "headers": {"Authorization": "VIBE_TEST_HOOK_AUTH"}}]},
    })
    with pytest.raises(ConfigError) as info:
        Orchestrator(config, provider=SimulatedProvider(config.provider.simulated), agents={})
    assert info.value.field == field
    assert "example.com" not in str(info.value) and "Bearer" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["http:// bad host", "https://hooks.example.com/\r\nx",
                                 "gopher://x", "https://"])
def test_r7_2_webhook_urls_given_in_python_are_checked(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        WebhookConfig(url=url)
    with pytest.raises(ConfigError) as info:
        WebhookSender(url, "json", {}, AlertsConfig())
    assert info.value.field == "url" and "hooks" not in str(info.value)
    with pytest.raises(ConfigError) as header:
        WebhookSender("https://hooks.example.com/x", "json", {"Authorization": "a\nb"},
                      AlertsConfig())
    assert header.value.field == "headers.Authorization"
    assert Webhooks.from_config(AlertsConfig(webhooks=[
        WebhookConfig(url="https://hooks.example.com/x")])).senders[0].url


@pytest.mark.parametrize(("url", "key", "field"), [
    ("127.0.0.1:9", "sk-fine", "serve.upstream_base_url"),
    ("http://127.0.0.1:9/ x", "sk-fine", "serve.upstream_base_url"),
    ("http://127.0.0.1:9", "sk bad", "api_key"),
    ("http://127.0.0.1:9", "sk-bad\n", "api_key"),
])
def test_r7_2_serve_upstream_from_python_is_checked(url: str, key: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        UpstreamProvider(url, key)
    assert info.value.field == field and "bad" not in str(info.value)
