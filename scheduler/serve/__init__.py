"""``vibe-engine serve``: an Anthropic-compatible gateway that governs agents we did not
write (#21) — the Messages API over HTTP, every call on the governed path of a run
whose tasks are the client keys.

Owns the ASGI app, client keys, the upstream provider, the serve run and the governed
drop-in client (the SDK's own clients over the app in-process).  May import
``scheduler`` and its subpackages (public names); never ``agents`` or ``scheduler.cli``.
"""

from scheduler.serve._app import create_app as create_app
from scheduler.serve._client import governed_async_client as governed_async_client
from scheduler.serve._client import governed_client as governed_client
from scheduler.serve._keys import KeyRing as KeyRing
from scheduler.serve._runtime import Served as Served
from scheduler.serve._server import listen as listen
from scheduler.serve._server import serve_forever as serve_forever
from scheduler.serve._upstream import UpstreamError as UpstreamError
from scheduler.serve._upstream import UpstreamProvider as UpstreamProvider

__all__ = ["KeyRing", "Served", "UpstreamError", "UpstreamProvider", "create_app",
           "governed_async_client", "governed_client", "listen", "serve_forever"]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
