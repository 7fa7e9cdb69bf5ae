"""The upstream hop through an HTTP proxy from the environment, with httpx (#21).

:class:`~scheduler.serve._http.HttpClient` speaks only to the origin itself; when
``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` applies to the upstream (and ``NO_PROXY``
does not exempt it), httpx — which knows proxies, CONNECT tunnels and their auth —
carries the calls instead, behind the same small interface.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import httpx2 as httpx

from scheduler.net import ConnectFailed, Disconnected, HttpTimeout


def proxied(base_url: str) -> bool:
    """Whether the environment sends requests to ``base_url`` through a proxy."""
    proxies = urllib.request.getproxies_environment()
    url = urlsplit(base_url)
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.hostname or "")


class ProxiedAnswer:
    """An httpx response as a :class:`~scheduler.serve._http.Response`."""

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers = dict(resp.headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_bytes():  # decoded: no content-encoding relayed
                yield chunk
        except httpx.TimeoutException:
            raise HttpTimeout("the upstream stopped sending within the read timeout") from None
        except httpx.HTTPError as exc:
            raise Disconnected(f"the upstream connection failed: {type(exc).__name__}") from None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        await self._resp.aclose()


class ProxiedClient:
    """httpx with the environment's proxy settings, as an upstream client."""

    def __init__(self, base_url: str, *, timeout_s: float, connect_s: float) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s, connect=connect_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    async def send(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                   body: bytes) -> ProxiedAnswer:
        request = self._client.build_request(method, target, content=body, headers=headers)
        try:
            return ProxiedAnswer(await self._client.send(request, stream=True))
        except httpx.TimeoutException:
            raise HttpTimeout("the upstream did not answer in time") from None
        except httpx.TransportError as exc:
            raise ConnectFailed(f"through the proxy: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        await self._client.aclose()
