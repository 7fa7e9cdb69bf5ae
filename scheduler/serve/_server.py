"""Running the gateway over HTTP with uvicorn (#21)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from scheduler.core import ConfigError
from scheduler.serve._app import create_app
from scheduler.serve._protocol import protocol_class
from scheduler.serve._runtime import Served


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0 picks a free one); refused with the field named."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response's header and body writes then never
    # wait for the client's delayed ACK (40 ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except (TypeError, ValueError) as exc:  # a NUL, or a label idna cannot encode
        sock.close()
        raise ConfigError("serve.host", host, f"cannot listen on it: {exc}") from None
    except OSError as exc:
        sock.close()
        if isinstance(exc, socket.gaierror):  # the address, not the port, is wrong
            raise ConfigError("serve.host", host,
                              f"cannot listen on it: {exc.strerror}") from None
        raise ConfigError("serve.port", port,
                          f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_config(served: Served, ssl_certfile: Path | None = None,
                   ssl_keyfile: Path | None = None) -> uvicorn.Config:
    """How ``vibe-engine serve`` runs uvicorn over the app of ``served``."""
    return uvicorn.Config(
        # httptools (uvicorn's C parser; h11 costs serve more CPU per call than its own
        # work), with a response's head and body sent in one write
        create_app(served), http=protocol_class(served.config.serve.request_timeout_s),
        lifespan="off", log_level="warning",
        access_log=False, proxy_headers=False,  # nothing here reads the client's address
        server_header=False,  # one header fewer to encode on every response
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None, timeout_keep_alive=75,
    )


async def serve_forever(
    served: Served, *, host: str | None = None, port: int | None = None,
    ssl_certfile: Path | None = None, ssl_keyfile: Path | None = None,
    on_ready: Callable[[str], None] | None = None, sock: socket.socket | None = None,
) -> None:
    """Serve ``served`` until the process is interrupted (uvicorn handles SIGINT/SIGTERM),
    then stop the run: the keys' tasks end and their usage is written.  ``sock`` is a
    socket :func:`listen` already bound (else ``host``/``port``, default ``[serve]``)."""
    cfg = served.config.serve
    host = host or cfg.host
    if sock is None:
        sock = listen(host, cfg.port if port is None else port)
    scheme = "https" if ssl_certfile else "http"
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(served, ssl_certfile, ssl_keyfile))
    async with served.running():
        if on_ready is not None:
            on_ready(f"{scheme}://{host}:{bound}")
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
