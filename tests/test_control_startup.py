"""The run's end does not wait for the control server's start-up (R3.4 decisions).

The control service removes the socket a crashed run left when a run starts.  In a
worker thread on virtual time, trio's ``MockClock`` jumps while the removal runs, and
a thread cannot be cancelled: a run whose tasks ended meanwhile cancelled its services,
then waited for the thread with no deadline left but its caller's, and the clock
jumped to that one.
"""

from __future__ import annotations

import socket as _socket
import threading
from pathlib import Path

import anyio
import pytest

from scheduler import TaskSpec
from scheduler.runtime import AgentContext
from scheduler.testing import build_orchestrator, run_virtual


class UntilRemoving:
    """Works (without a model call) until the control server removes the old socket."""

    def __init__(self, removing: threading.Event) -> None:
        self.removing = removing

    async def run(self, ctx: AgentContext) -> str:
        while not self.removing.is_set():  # noqa: ASYNC110 -- set by a worker thread
            await anyio.sleep(0.1)
        return "done"


def test_r3_4_a_run_ends_while_the_control_server_removes_a_stale_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R3.4/R5.7: a run whose tasks end before the control server (``decide``) has
    removed the socket a crashed run left ends then, not at its caller's timeout."""
    socket = tmp_path / "control" / "decide.sock"
    socket.parent.mkdir(mode=0o700)
    with _socket.socket(_socket.AF_UNIX) as dead:  # a crashed run's socket: no listener
        dead.bind(str(socket))
    unlink = Path.unlink
    released, removing = threading.Event(), threading.Event()

    def slow_unlink(self: Path, *args: object, **kwargs: object) -> None:
        if self == socket:
            removing.set()
        if self == socket and threading.current_thread() is not threading.main_thread():
            released.wait(5)  # a worker thread's removal outlasts the run (real time)
        unlink(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "unlink", slow_unlink)

    async def main() -> None:
        orch = build_orchestrator({"q": lambda: UntilRemoving(removing)}, state_dir=tmp_path)
        with anyio.fail_after(10_000):
            report = await orch.run([TaskSpec(id="t", agent="q", prompt="x")])
        assert report.outcomes["t"].status == "completed"

    try:
        run_virtual(main)
    finally:
        released.set()
