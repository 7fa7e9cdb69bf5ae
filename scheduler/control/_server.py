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

Whatever a client sends — not JSON, not UTF-8, over 64 KiB, wrong types,
``1e400`` or NaN where an amount belongs — it gets an error reply and the run
goes on: a request is checked field by field (:func:`parse_request`) before it
reaches the pause controller, and a handler never lets an error out into the
task group that runs every task.
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
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from scheduler.control._pause import PauseController
from scheduler.core import (
    DecisionError,
    EventBus,
    VibeEngineError,
    get_logger,
    off_loop,
    write_private,
)

_log = get_logger("vibe_engine.control")
_MAX_REQUEST = 64 * 1024
#: A client that connects and sends no full line in this long is answered and dropped.
_READ_TIMEOUT_S = 30.0
_OPS = ("decide", "paused")
_TEXT_FIELDS = {"op": 16, "task_id": 128, "action": 32}
_AMOUNTS = ("tokens", "cost_usd", "time_s", "file_edits", "shell_commands")


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
        try:
            return read_token(state_dir)
        except _CorruptToken:
            # no client can send what an empty or garbled file holds: a new secret
            # (one orchestrator per state directory, so nobody holds the old one)
            write_private(paths.token, secrets.token_hex(32))
            return read_token(state_dir)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32))
    return read_token(state_dir)


class _CorruptToken(VibeEngineError):
    """The token file holds no hex secret (a crash or a full disk mid-write, an edit)."""


def read_token(state_dir: Path) -> str:
    """The control token; refuses a token file others can read or that someone else owns,
    or one that holds no hex secret."""
    path = control_paths(state_dir).token
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VibeEngineError(f"control token {path} must be owned by you with mode 0600")
    token = path.read_bytes().strip()
    if not token or token.strip(b"0123456789abcdef"):
        raise _CorruptToken(f"control token {path} is not a hex secret; the next run "
                            "writes a new one")
    return token.decode("ascii")


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
    # the token is hex: anything not ASCII (a lone surrogate cannot even be encoded) is wrong
    if not isinstance(token, str) or not token.isascii() or not hmac.compare_digest(
        token.encode("ascii"), expected_token.encode("ascii")
    ):
        return "missing or wrong control token"
    return None


class BadRequest(ValueError):
    """A control request that is not well-formed (answered with an error, never raised on)."""


def parse_request(raw: str) -> dict[str, Any]:
    """The request in ``raw``, checked: a JSON object whose text fields are short strings
    and whose amounts are JSON numbers (their range is checked with the decision)."""
    try:
        request = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(request, dict):
        raise BadRequest("request must be a JSON object")
    for key, limit in _TEXT_FIELDS.items():
        value = request.get(key)
        if value is not None and not (isinstance(value, str) and len(value) <= limit):
            raise BadRequest(f"{key} must be a string of at most {limit} characters")
    if request.get("op", "decide") not in _OPS:
        raise BadRequest(f"unknown op; choose one of {', '.join(_OPS)}")
    for key in _AMOUNTS:
        value = request.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(f"{key} must be a number")
    return request


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
            except Exception as exc:  # one bad request must never end the run
                _log.error("control_request_failed", error=f"{type(exc).__name__}: {exc}")
                reply = {"ok": False, "error": f"request failed: {type(exc).__name__}"}
            if reply is None:
                return  # a liveness probe: connected and closed without a request
            try:
                await stream.send((json.dumps(reply) + "\n").encode())
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                _log.info("control_client_gone", error=str(exc))

    async def _answer(self, stream: SocketStream) -> dict[str, Any] | None:
        try:
            with anyio.fail_after(_READ_TIMEOUT_S):
                raw = await _read_line(stream)
            if not raw:
                return None
            request = parse_request(raw)
        except TimeoutError:
            return self._refuse(None, "", "malformed request: no complete line in time")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return None  # the client went away before sending a request
        except ValueError as exc:  # BadRequest, too large, not UTF-8
            return self._refuse(None, "", f"malformed request: {exc}")
        sock = stream.extra(SocketAttribute.raw_socket)
        uid = peer_uid(sock)
        task_id = str(request.get("task_id") or "")
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
        if request.get("op", "decide") == "paused":
            return {"paused": [p.to_dict() for p in self.controller.paused_tasks()]}
        # amounts go through as given: the controller's validate_decision refuses NaN,
        # infinities, non-positive and fractional counts, with the same words as the CLI
        return await self.controller.decide(
            request.get("task_id") or "", request.get("action") or "",
            tokens=request.get("tokens"), cost_usd=request.get("cost_usd"),
            time_s=request.get("time_s"), file_edits=request.get("file_edits"),
            shell_commands=request.get("shell_commands"), source=f"socket:uid={uid}",
        )

    def _refuse(self, uid: int | None, task_id: str, reason: str) -> dict[str, Any]:
        self.events.emit("decision_refused", reason, task_id=task_id or None, level="warning",
                         peer_uid=uid)
        return {"ok": False, "error": f"refused: {reason}"}


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
    line = buf.split(b"\n", 1)[0]
    if len(line) > _MAX_REQUEST:
        raise ValueError("request too large")
    return line.decode()


async def _remove_stale(path: Path) -> None:
    """Remove a socket left by a dead orchestrator; refuse to steal a live one.

    Through :func:`off_loop` (in line on virtual time): a worker thread cannot be
    cancelled, so a run ending meanwhile waits for it, and trio's ``MockClock`` jumps
    while it runs -- to the caller's deadline once the run cancelled all else."""
    if not await off_loop(_removed_unless_live, path):
        raise VibeEngineError(f"another orchestrator is listening on {path}")


def _removed_unless_live(path: Path) -> bool:
    """Remove ``path`` unless an orchestrator listens on it (then False)."""
    if not path.exists():
        return True
    if _is_listening(path):
        return False
    path.unlink(missing_ok=True)
    return True


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
    answer = json.loads(reply)
    if not isinstance(answer, dict):
        raise ValueError(f"the control socket answered {reply[:80]!r}")
    return answer
