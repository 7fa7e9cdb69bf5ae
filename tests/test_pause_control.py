"""R3.4: decisions from another terminal through the owner-only control channel."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog.testing

from scheduler import VibeEngineError
from scheduler.cli._decide import decide, decide_async
from scheduler.control import ControlServer
from scheduler.control._server import (
    authorize,
    control_paths,
    ensure_token,
    read_token,
    send_request,
)
from scheduler.core import DecisionError
from scheduler.testing import run_virtual
from tests._alerts_helpers import Harness, open_harness, profile, sqlite_store

# decisions travel over a real Unix socket, some from other processes
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]


async def _paused(store_dir: Path | None = None) -> Harness:
    store = sqlite_store(store_dir) if store_dir is not None else None
    h = await open_harness(store=store, tasks={"t": profile(tokens=1000)}, poll_s=None)
    await h.charge("t", tokens=1000)
    assert h.controller.is_paused("t")
    return h


def _decide_code(state: Path, *args: str) -> str:
    return (
        "import json, sys; from pathlib import Path; "
        "from scheduler.cli._decide import decide; "
        f"print(json.dumps(decide({', '.join(args)}, state_dir=Path({str(state)!r}))))"
    )


async def test_r3_4_decision_from_another_process_via_the_socket(tmp_path: Path) -> None:
    """R3.4: ``decide`` in a second process reaches the running orchestrator."""
    state = tmp_path / "st"
    h = await _paused()
    server = ControlServer(h.controller, state)
    async with anyio.create_task_group() as tg:
        sock = await tg.start(server.serve)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(control_paths(state).directory).st_mode) == 0o700
        code = _decide_code(state, "'t'", "'add'", "tokens=50000")
        proc = await anyio.run_process([sys.executable, "-c", code])
        with anyio.fail_after(10):
            decision = await h.controller.wait_decision("t")
        tg.cancel_scope.cancel()
    reply = json.loads(proc.stdout)
    assert reply == {"accepted": True, "action": "add_budget", "via": "socket"}
    assert decision.action == "add_budget" and decision.tokens == 50_000
    assert decision.source == f"socket:uid={os.getuid()}"
    assert h.tracker.task_scope("t").limits.tokens == 51_000
    assert not sock.exists()  # removed when the server stops
    assert not h.named("decision_refused")


async def test_r3_4_review_from_another_process_returns_the_summary(tmp_path: Path) -> None:
    state = tmp_path / "st"
    h = await _paused()
    server = ControlServer(h.controller, state)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        proc = await anyio.run_process(
            [sys.executable, "-c", _decide_code(state, "'t'", "'review'")])
        tg.cancel_scope.cancel()
    reply = json.loads(proc.stdout)
    assert reply["action"] == "review" and reply["summary"]["usage"]["tokens"] == 1000
    assert h.controller.is_paused("t")


async def test_r3_4_wrong_token_is_refused_and_logged(tmp_path: Path) -> None:
    state = tmp_path / "st"
    h = await _paused()
    server = ControlServer(h.controller, state)
    async with anyio.create_task_group() as tg:
        sock = await tg.start(server.serve)
        stream = await anyio.connect_unix(sock)
        async with stream:
            await stream.send(json.dumps({"op": "decide", "task_id": "t", "action": "finish",
                                          "token": "0" * 64}).encode() + b"\n")
            reply = json.loads(await stream.receive())
        bad = await anyio.connect_unix(sock)
        async with bad:
            await bad.send(b"not json\n")
            malformed = json.loads(await bad.receive())
        tg.cancel_scope.cancel()
    assert reply == {"ok": False, "error": "refused: missing or wrong control token"}
    assert malformed["ok"] is False and "malformed" in malformed["error"]
    refused = h.named("decision_refused")
    assert [e.task_id for e in refused] == ["t", None]
    assert refused[0].data["peer_uid"] == os.getuid()
    assert h.controller.is_paused("t")  # nothing was decided


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                    reason="switching to another uid needs root")
async def test_r3_4_decision_from_another_uid_is_refused_even_with_the_token() -> None:
    """R3.4: SO_PEERCRED refuses another user, even if the socket was made reachable."""
    state = Path(tempfile.mkdtemp(prefix="vibe-uid-"))
    try:
        os.chmod(state, 0o711)
        h = await _paused()
        server = ControlServer(h.controller, state)
        async with anyio.create_task_group() as tg:
            sock = await tg.start(server.serve)
            os.chmod(control_paths(state).directory, 0o711)  # a misconfiguration
            os.chmod(sock, 0o666)
            code = (
                "import json, socket, sys; s = socket.socket(socket.AF_UNIX); "
                "s.connect(sys.argv[1]); s.sendall((json.dumps({'task_id': 't', "
                "'action': 'finish', 'token': sys.argv[2]}) + '\\n').encode()); "
                "print(s.makefile().readline())"
            )
            with structlog.testing.capture_logs() as logs:
                proc = await anyio.run_process(
                    ["/usr/bin/python3", "-c", code, str(sock), server.token], user=65534,
                )
            tg.cancel_scope.cancel()
        reply = json.loads(proc.stdout)
        assert reply["ok"] is False and "peer uid 65534" in reply["error"]
        assert [e.data["peer_uid"] for e in h.named("decision_refused")] == [65534]
        assert any(r["event"] == "decision_refused" for r in logs)
        assert h.controller.is_paused("t")
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_r3_4_authorize_checks_peer_uid_and_token() -> None:
    ok = {"expected_token": "s3cret", "owner_uid": 1000}
    assert authorize(uid=1000, token="s3cret", **ok) is None  # type: ignore[arg-type]
    assert authorize(uid=None, token="s3cret", **ok) is None  # type: ignore[arg-type]
    assert "peer uid 1001" in str(authorize(uid=1001, token="s3cret", **ok))  # type: ignore[arg-type]
    assert "wrong control token" in str(authorize(uid=1000, token="nope", **ok))  # type: ignore[arg-type]
    assert "wrong control token" in str(authorize(uid=1000, token=None, **ok))  # type: ignore[arg-type]


def test_r3_4_token_file_is_owner_only(tmp_path: Path) -> None:
    token = ensure_token(tmp_path)
    paths = control_paths(tmp_path)
    assert len(token) == 64 and ensure_token(tmp_path) == token  # created once
    assert stat.S_IMODE(paths.token.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700
    os.chmod(paths.token, 0o640)
    with pytest.raises(VibeEngineError, match="mode 0600"):
        read_token(tmp_path)


def test_r3_4_decide_without_an_orchestrator_writes_to_the_store(tmp_path: Path) -> None:
    """R3.4: with nobody listening (even a stale socket file) the store takes the decision."""
    state = tmp_path / "st"

    async def pause() -> None:
        h = await _paused(state)
        await h.store.aclose()

    run_virtual(pause)
    ensure_token(state)
    control_paths(state).socket.touch()  # left behind by a killed orchestrator
    reply = decide("t", "add_budget", tokens=2_000, state_dir=state)
    assert reply == {"accepted": True, "action": "add_budget", "stored": True, "via": "store",
                     "session": "s1"}
    review = decide("t", "review", state_dir=state)
    assert review["summary"]["usage"]["tokens"] == 1000
    with pytest.raises(DecisionError, match="not paused: the store has no task of that name"):
        decide("nobody", "finish", state_dir=state)
    with pytest.raises(DecisionError, match="unknown decision"):
        decide("t", "explode", state_dir=state)

    async def restart() -> int | None:
        h = await open_harness(store=sqlite_store(state), tasks={"t": profile(tokens=1000)})
        with anyio.fail_after(1):
            await h.controller.wait_decision("t")
        await h.store.aclose()
        return h.tracker.task_scope("t").limits.tokens

    assert run_virtual(restart) == 3_000


async def test_r3_4_socket_refusal_surfaces_as_decision_error(tmp_path: Path) -> None:
    state = tmp_path / "st"
    h = await _paused()
    server = ControlServer(h.controller, state)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        with pytest.raises(DecisionError, match="not paused"):
            await decide_async("other", "finish", state_dir=state)
        listing: dict[str, Any] = await send_request(state, {"op": "paused"})
        tg.cancel_scope.cancel()
    assert [p["task_id"] for p in listing["result"]["paused"]] == ["t"]


async def test_r3_4_a_second_server_refuses_to_steal_a_live_socket(tmp_path: Path) -> None:
    state = tmp_path / "st"
    h = await _paused()
    async with anyio.create_task_group() as tg:
        await tg.start(ControlServer(h.controller, state).serve)
        with pytest.raises(VibeEngineError, match="another orchestrator"):
            await ControlServer(h.controller, state).serve()
        tg.cancel_scope.cancel()
