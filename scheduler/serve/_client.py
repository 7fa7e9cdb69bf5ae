"""The governed drop-in client (#21): the official SDK's clients on serve's path, in-process.

An application governed by changing one line::

    client = anthropic.Anthropic()                        # before
    with governed_client("vibe.toml") as client: ...      # after: same object type

What it gets is the real ``anthropic.Anthropic`` (or ``AsyncAnthropic``) — so
``messages.create``, ``messages.stream`` and ``messages.count_tokens`` keep their
signatures and return types — whose HTTP transport is the serve app in this process
(:mod:`._transport`): every call is authenticated as one of the config's client keys
and takes the gateway's governed path (estimate → admit → lease → call → settle →
signal) exactly as a request to ``vibe-engine serve`` would, with the same answers at
a budget limit (``reject``/``hold``).  The run lives as long as the ``with`` block: its
end lets in-flight calls finish, then ends the run, which writes the ledger and the
session's state, so ``vibe-engine status`` shows the key like serve's keys.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2 as httpx
from anyio.from_thread import start_blocking_portal
from pydantic import ValidationError

from scheduler.config import ServeKey, VibeConfig, load_config
from scheduler.core import ConfigError
from scheduler.serve._app import create_app
from scheduler.serve._runtime import Served
from scheduler.serve._transport import AppTransport, PortalTransport

if TYPE_CHECKING:  # the SDK is imported when a client is made: serve itself needs none of it
    import anthropic

#: The base URL the SDK is given; nothing listens there, the transport is in-process.
BASE_URL = "http://vibe-engine.in-process"
#: The key name used when the config has no ``[[serve.keys]]`` (session and day budgets
#: still govern its calls).
DEFAULT_KEY = "client"


def _config(config: VibeConfig | str | Path, key: str | None) -> tuple[VibeConfig, str]:
    """The run's config and the key the client calls as."""
    cfg = config if isinstance(config, VibeConfig) else load_config(config)
    keys = cfg.serve.keys
    if not keys:  # a config without keys: one key, its calls within the run's budgets
        digest = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
        try:
            only = ServeKey(name=key or DEFAULT_KEY, key_sha256=digest)
        except ValidationError:
            raise ConfigError("key", key, "not a key name (letters, digits, . _ -)") from None
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"keys": (only,)})})
        return cfg, only.name
    if key is None:
        if len(keys) > 1:
            raise ConfigError("key", None, "the config has several [[serve.keys]]; name the "
                              f"one to call as ({', '.join(k.name for k in keys)})")
        key = keys[0].name
    return cfg, key


@asynccontextmanager
async def _running(config: VibeConfig, key: str, env: Mapping[str, str] | None
                   ) -> AsyncIterator[tuple[AppTransport, str]]:
    """The run, and a transport to its app with the in-process key of ``key``."""
    served = Served(config, env=env)
    token = served.keys.issue(key)
    async with served.running(), anyio.create_task_group() as tg:
        # the task group ends first: in-flight calls settle before the run ends
        yield AppTransport(create_app(served), tg), token


@asynccontextmanager
async def governed_async_client(
    config: VibeConfig | str | Path, *, key: str | None = None,
    env: Mapping[str, str] | None = None, **sdk_options: Any,
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """An ``anthropic.AsyncAnthropic`` whose calls are governed by a run of ``config``.

    ``key`` names the ``[[serve.keys]]`` entry the calls are made as (its budgets,
    priority, models, routing and ``on_limit``); it may be left out when the config
    has one key, or none (then a key named ``client`` is made).  ``env`` replaces
    ``os.environ`` for the upstream key; ``sdk_options`` go to the SDK client
    (``max_retries``, ``timeout``, ``default_headers`` …).  Runs in the caller's
    event loop.
    """
    cfg, name = _config(config, key)
    async with _running(cfg, name, env) as (transport, token):
        import anthropic

        http = httpx.AsyncClient(transport=transport, base_url=BASE_URL)
        client = anthropic.AsyncAnthropic(api_key=token, base_url=BASE_URL, http_client=http,
                                          **sdk_options)
        try:
            yield client
        finally:
            await client.close()


@contextmanager
def governed_client(
    config: VibeConfig | str | Path, *, key: str | None = None,
    env: Mapping[str, str] | None = None, **sdk_options: Any,
) -> Iterator[anthropic.Anthropic]:
    """An ``anthropic.Anthropic`` whose calls are governed by a run of ``config``.

    The same as :func:`governed_async_client` for synchronous code: the run lives in
    an event loop of its own on a background thread (an anyio blocking portal), and
    each HTTP step of the SDK is one call into it.  Safe to use from several threads.
    """
    cfg, name = _config(config, key)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        _running(cfg, name, env)
    ) as (transport, token):
        import anthropic

        http = httpx.Client(transport=PortalTransport(portal, transport), base_url=BASE_URL)
        client = anthropic.Anthropic(api_key=token, base_url=BASE_URL, http_client=http,
                                     **sdk_options)
        try:
            yield client
        finally:
            client.close()
