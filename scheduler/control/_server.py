"""The local control channel: decisions from another terminal (R3.4).

The running orchestrator listens on a Unix socket
``<state_dir>/control/decide.sock``.  Only the local user gets in:

* the ``control`` directory is created ``0700`` and the socket ``0600``;
* the server reads the peer's uid with ``SO_PEERCRED`` (Linux) and refuses any
  uid other than its own;
* every request carries the secret from ``<state_dir>/control/token``
  (created ``0600``, 32 random bytes), compared in constant time.

A refused request is answered with an error and logged as the EventBus event
``decision_refused``.  The protocol is one JSON object per line each way.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from scheduler.control._pause import PauseController
from scheduler.core import DecisionError, EventBus, VibeEngineError

_log = structlog.get_logger("vibe_engine.control")
_MAX_REQUEST = 64 * 1024


@dataclass(frozen=True, slots=True)
class ControlPaths:
    directory: Path
    socket: Path
    token: Path


def control_paths(state_dir: Path) -> ControlPaths:
    d = Path(state_dir) / "control"
    return ControlPaths(d, d / "decide.sock", d / "token")


def ensure_token(state_dir: Path) -> str:
    """Create (once) the owner-only control directory and token file; return the token."""
    paths = control_paths(state_dir)
    paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(paths.directory, 0o700)
    try:
        fd = os.open(paths.token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(state_dir)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32))
    return read_token(state_dir)


def read_token(state_dir: Path) -> str:
    """The control token; refuses a token file others can read or that someone else owns."""
    path = control_paths(state_dir).token
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VibeEngineError(f"control token {path} must be owned by you with mode 0600")
    return path.read_text(encoding="ascii").strip()


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None if unknown)."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:  # pragma: no cover - not Linux
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def authorize(
    *, uid: int | None, token: object, expected_token: str, owner_uid: int
) -> str | None:
    """Why a request is refused (``None`` = accepted): wrong uid or wrong token."""
    if uid is not None and uid != owner_uid:
        return f"peer uid {uid} is not the owner uid {owner_uid}"
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), expected_token.encode()
    ):
        return "missing or wrong control token"
    return None


class ControlServer:
    """Serves ``decide`` requests on the control socket (anyio; run in a task group)."""

    def __init__(self, controller: PauseController, state_dir: Path,
                 events: EventBus | None = None) -> None:
        self.controller = controller
        self.paths = control_paths(state_dir)
        self.events = events or controller.events
        self.token = ensure_token(state_dir)
        self.owner_uid = os.getuid()

    async def serve(self, *, task_status: TaskStatus[Path] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``task_status.started`` gets the socket path."""
        await _remove_stale(self.paths.socket)
        listener = await anyio.create_unix_listener(self.paths.socket, mode=0o600)
        self.events.emit("control_listening", "decisions accepted on the control socket",
                         path=str(self.paths.socket))
        try:
            async with listener, anyio.create_task_group() as tg:
                task_status.started(self.paths.socket)
                await listener.serve(self._handle, task_group=tg)
        finally:
            self.paths.socket.unlink(missing_ok=True)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                reply = await self._answer(stream)
                if reply is None:
                    return  # a liveness probe: connected and closed without a request
                await stream.send((json.dumps(reply) + "\n").encode())
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                _log.info("control_client_gone", error=str(exc))

    async def _answer(self, stream: SocketStream) -> dict[str, Any] | None:
        try:
            raw = await _read_line(stream)
            if not raw:
                return None
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            return self._refuse(None, "", f"malformed request: {exc}")
        sock = stream.extra(SocketAttribute.raw_socket)
        uid = peer_uid(sock)
        task_id = str(request.get("task_id", ""))
        reason = authorize(uid=uid, token=request.get("token"), expected_token=self.token,
                           owner_uid=self.owner_uid)
        if reason is not None:
            return self._refuse(uid, task_id, reason)
        try:
            result = await self._dispatch(request, uid)
        except DecisionError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "result": result}

    async def _dispatch(self, request: dict[str, Any], uid: int | None) -> dict[str, Any]:
        op = request.get("op", "decide")
        if op == "paused":
            return {"paused": [p.to_dict() for p in self.controller.paused_tasks()]}
        if op != "decide":
            raise DecisionError(f"unknown op {op!r}")
        return await self.controller.decide(
            str(request.get("task_id", "")), str(request.get("action", "")),
            tokens=_opt_int(request, "tokens"), cost_usd=_opt_float(request, "cost_usd"),
            time_s=_opt_float(request, "time_s"), file_edits=_opt_int(request, "file_edits"),
            shell_commands=_opt_int(request, "shell_commands"),
            source=f"socket:uid={uid}",
        )

    def _refuse(self, uid: int | None, task_id: str, reason: str) -> dict[str, Any]:
        self.events.emit("decision_refused", reason, task_id=task_id or None, level="warning",
                         peer_uid=uid)
        return {"ok": False, "error": f"refused: {reason}"}


def _opt_float(request: dict[str, Any], key: str) -> float | None:
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecisionError(f"{key} must be a number, got {value!r}")
    return float(value)


def _opt_int(request: dict[str, Any], key: str) -> int | None:
    value = _opt_float(request, key)
    return None if value is None else int(value)


async def _read_line(stream: SocketStream) -> str:
    buf = b""
    while b"\n" not in buf:
        if len(buf) > _MAX_REQUEST:
            raise ValueError("request too large")
        try:
            chunk = await stream.receive()
        except anyio.EndOfStream:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


async def _remove_stale(path: Path) -> None:
    """Remove a socket left by a dead orchestrator; refuse to steal a live one."""
    apath = anyio.Path(path)
    if not await apath.exists():
        return
    if _is_listening(path):
        raise VibeEngineError(f"another orchestrator is listening on {path}")
    await apath.unlink(missing_ok=True)


def _is_listening(path: Path) -> bool:
    """A local Unix-socket connect never blocks: it succeeds or fails at once."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def send_request(state_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the running orchestrator (adds the token); return its reply.

    Raises ``OSError`` (``FileNotFoundError``, ``ConnectionRefusedError``) when
    no orchestrator is listening.
    """
    paths = control_paths(state_dir)
    payload = {**request, "token": read_token(state_dir)}
    stream = await anyio.connect_unix(paths.socket)
    async with stream:
        await stream.send((json.dumps(payload) + "\n").encode())
        reply = await _read_line(stream)
    answer: dict[str, Any] = json.loads(reply)
    return answer
