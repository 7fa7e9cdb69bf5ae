"""Shared set-up of the ``vibe-engine serve`` tests (#21): the fake API upstream and a
serve run over real HTTP (uvicorn in the test's event loop, or a subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from scheduler.config import config_from_dict
from scheduler.core import Totals, WallClock
from scheduler.serve import Served, listen
from scheduler.serve._server import uvicorn_config
from scheduler.store import Store
from scheduler.tasks import TaskHandle
from tests._anthropic_helpers import SECRET_KEY

#: Client keys, by the environment variable the config names.
CLIENT_KEYS = {"VIBE_KEY_A": "sk-client-alpha", "VIBE_KEY_B": "sk-client-beta"}
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "vibe-engine"


@dataclass
class Running:
    url: str
    served: Served

    def totals(self, key: str) -> Totals:
        return self.served.orchestrator.tracker.task_scope(key).totals

    async def settled(self, key: str, calls: int) -> Totals:
        """The key's totals once ``calls`` calls settled: a streamed answer's last event
        reaches the client just before its call settles."""
        with anyio.fail_after(5):
            while self.totals(key).calls < calls:  # noqa: ASYNC110 - settling is not signalled
                await anyio.sleep(0.01)
        return self.totals(key)


def serve_config(tmp_path: Path, upstream: str, keys: list[dict[str, Any]],
                 **serve: Any) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"), "session_id": "serve-test",
        "serve": {"upstream_base_url": upstream, "upstream_key_env": "UPSTREAM_KEY",
                  "keys": keys, **serve},
    }


@asynccontextmanager
async def serving(data: dict[str, Any], wall: WallClock | None = None,
                  store: Store | None = None) -> AsyncIterator[Running]:
    """``vibe-engine serve`` in this event loop on a free port, until the block ends."""
    served = Served(config_from_dict(data), env={"UPSTREAM_KEY": SECRET_KEY, **CLIENT_KEYS},
                    wall=wall, store=store)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(served))  # as `vibe-engine serve` runs it
    async with served.running(), anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await anyio.sleep(0.01)
        try:
            yield Running(f"http://127.0.0.1:{sock.getsockname()[1]}", served)
        finally:
            server.should_exit = True


@contextmanager
def serve_process(config: Path, cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """``vibe-engine serve CONFIG --port 0`` as a subprocess; yields its URL."""
    proc = subprocess.Popen(
        [str(BIN), "serve", str(config), "--port", "0"],
        cwd=cwd, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    drain: threading.Thread | None = None
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"serve on (http://[\d.:]+)", line)
        assert found, line + (proc.stderr.read() if proc.poll() is not None else "")
        # read the rest of its log meanwhile: a replica that logs much would otherwise
        # block on a full pipe and stall the test
        drain = threading.Thread(target=proc.stderr.read, daemon=True)
        drain.start()
        yield found[1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if drain is not None:
            drain.join(timeout=5)  # the pipe's end is closed: it reads to the end
        if proc.stderr is not None:
            proc.stderr.close()


#: A grouped call's one message (:func:`grouped_call`).
GROUPED_USER: Any = [{"role": "user", "content": "One word, please."}]


async def grouped_call(served: Served, key: str | None, name: str) -> TaskHandle:
    """One call of the key named ``key`` (None: the one key) grouped under ``name``, as
    the messages handler makes it."""
    if key is None:
        (entry,) = served.keys.entries()
    else:
        entry = next(e for e in served.keys.entries() if e.name == key)
    handle = await served.group(entry, name)
    assert handle is not None
    try:
        await served.gateway.complete(handle, messages=GROUPED_USER, max_tokens=16)
    finally:
        served.release(handle)
    return handle
