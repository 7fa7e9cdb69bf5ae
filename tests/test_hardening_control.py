"""R3.4 hardening: whatever reaches the control socket, the run goes on (issue #19).

A request with ``tokens`` of ``1e400`` or NaN, a token that is not UTF-8, an
oversized or wrong-typed request gets an error reply; the orchestrator keeps
running and the paused task still takes the one good decision.  For one pause
the first decision wins and the second is told so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.builtin import StepsAgent
from scheduler import Limits, TaskSpec, VibeConfig
from scheduler.cli._decide import decide
from scheduler.control._server import control_paths, read_token
from scheduler.core import DecisionError
from scheduler.runtime import Orchestrator, RunReport
from scheduler.testing import ScriptedProvider, build_orchestrator, run_real, run_virtual
from tests._alerts_helpers import open_harness, profile, sqlite_store

# a real Unix socket between the orchestrator and its clients: real I/O, real time
pytestmark = [pytest.mark.anyio, pytest.mark.real_asyncio]
CLI = str(Path(sys.executable).parent / "vibe-engine")


@contextmanager
def _short_dir() -> Iterator[Path]:
    """A state dir with a short path: a Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vh-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _spec() -> TaskSpec:
    # each call spends 3,500 tokens against a 5,000 budget: the second call pauses the task
    return TaskSpec(id="c1", agent="coder", prompt="Fix the crash",
                    params={"steps": 3, "max_tokens": 100}, budget=Limits(tokens=5_000))


class Paused:
    """A running orchestrator whose task ``c1`` is paused, and its finished report."""

    def __init__(self, orch: Orchestrator, state: Path) -> None:
        self.orch = orch
        self.state = state
        self.token = read_token(state)
        self.report: list[RunReport] = []

    async def raw(self, data: bytes) -> dict[str, Any] | None:
        """Send raw bytes on the socket; the decoded reply (None if the server closed)."""
        stream = await anyio.connect_unix(control_paths(self.state).socket)
        async with stream:
            await stream.send(data)
            await stream.send_eof()
            buf = b""
            with anyio.fail_after(10):
                while not buf.endswith(b"\n"):
                    try:
                        buf += await stream.receive()
                    except anyio.EndOfStream:
                        break
        return json.loads(buf) if buf else None

    async def request(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Send ``fields`` with the right control token (NaN and inf encoded as JSON allows)."""
        return await self.raw((json.dumps({"token": self.token, **fields}) + "\n").encode())


@asynccontextmanager
async def paused_orchestrator(state: Path) -> AsyncIterator[Paused]:
    config = VibeConfig(state_dir=state, store="memory", session_id="s1")
    orch = build_orchestrator({"coder": StepsAgent}, config=config,
                              provider=ScriptedProvider(latency_s=0, prompt=3_000,
                                                        completion=500))
    paused, listening = anyio.Event(), anyio.Event()

    def seen(event: Any) -> None:
        if event.name == "task_paused":
            paused.set()
        elif event.name == "control_listening":
            listening.set()

    orch.bus.subscribe(seen)
    async with anyio.create_task_group() as tg:
        holder: list[Paused] = []

        async def run() -> None:
            report = await orch.run([_spec()])
            holder[0].report.append(report)

        tg.start_soon(run)
        with anyio.fail_after(30):
            await paused.wait()
            await listening.wait()
        holder.append(Paused(orch, state))
        yield holder[0]


def _decide_ok(reply: dict[str, Any] | None) -> None:
    assert reply is not None and reply["ok"] is True, reply


#: Requests that used to raise out of the handler (and cancel every task) or were taken.
NASTY: list[bytes | dict[str, Any]] = [
    {"task_id": "c1", "action": "add_budget", "tokens": float("inf")},  # 1e400 in JSON
    b'{"task_id": "c1", "action": "add_budget", "tokens": 1e400, "token": "%s"}\n',
    {"task_id": "c1", "action": "add_budget", "tokens": float("nan")},
    {"task_id": "c1", "action": "add_budget", "cost_usd": float("nan")},
    {"task_id": "c1", "action": "add_budget", "cost_usd": float("-inf")},
    {"task_id": "c1", "action": "add_budget", "time_s": float("inf")},
    {"task_id": "c1", "action": "add_budget", "tokens": -5},
    {"task_id": "c1", "action": "add_budget", "tokens": 0},
    {"task_id": "c1", "action": "add_budget", "tokens": 1.5},
    {"task_id": "c1", "action": "add_budget", "tokens": 2**60},
    {"task_id": "c1", "action": "add_budget", "tokens": "50000"},
    {"task_id": "c1", "action": "add_budget", "tokens": True},
    {"task_id": "c1", "action": "add_budget", "tokens": [1]},
    {"task_id": ["c1"], "action": "finish"},
    {"task_id": "c1" * 1000, "action": "finish"},
    {"task_id": "c1", "action": {"finish": 1}},
    {"op": ["paused"]},
    {"op": "shutdown"},
    b'{"token": "\xff\xfe", "task_id": "c1", "action": "finish"}\n',  # not UTF-8
    b'{"token": "\\ud800", "task_id": "c1", "action": "finish"}\n',  # a lone surrogate
    b'{"token": 12, "task_id": "c1", "action": "finish"}\n',
    b"x" * (70 * 1024) + b"\n",  # oversized
    b"[" * 100_000 + b"\n",  # nested past the recursion limit
    b"not json\n",
    b"[1, 2]\n",
    b'{"task_id": "c1", "action": "finish", "token": "%s"}',  # no newline, then EOF
]


def _encode(item: bytes | dict[str, Any], token: str) -> bytes:
    if isinstance(item, dict):
        return (json.dumps({"token": token, **item}) + "\n").encode()
    return item.replace(b"%s", token.encode()) if b"%s" in item[:200] else item


async def test_r3_4_malformed_control_requests_get_an_error_and_the_run_goes_on() -> None:
    """#19: each malformed, oversized or wrong-typed request is answered with an error;
    the orchestrator keeps running and the paused task takes the good decision after."""
    with _short_dir() as state:
        async with paused_orchestrator(state) as p:
            for item in NASTY:
                reply = await p.raw(_encode(item, p.token))
                if item == NASTY[-1]:  # a complete request without its newline is read
                    assert reply is not None and reply["ok"] is True, reply
                    break
                assert reply is not None and reply["ok"] is False, (item, reply)
                assert p.orch.controller.is_paused("c1"), item
        assert p.report[0].outcomes["c1"].status == "finished"  # the one good decision


async def test_r3_4_second_decision_for_one_pause_is_told_the_first_won() -> None:
    """#19: two decisions for one pause: the first wins, the second is refused and told."""
    with _short_dir() as state:
        async with paused_orchestrator(state) as p:
            replies: list[dict[str, Any] | None] = [None, None]

            async def send(i: int, fields: dict[str, Any]) -> None:
                replies[i] = await p.request({"task_id": "c1", **fields})

            async with anyio.create_task_group() as tg:  # at the same moment
                tg.start_soon(send, 0, {"action": "add_budget", "tokens": 50_000})
                tg.start_soon(send, 1, {"action": "finish"})
            late = await p.request({"task_id": "c1", "action": "finish"})
        outcome = p.report[0].outcomes["c1"]
    ok = [r for r in replies if r is not None and r["ok"]]
    refused = [r for r in replies if r is not None and not r["ok"]]
    assert len(ok) == 1 and len(refused) == 1, replies
    assert "already has a decision" in refused[0]["error"]
    assert late is not None and not late["ok"] and "already has a decision" in late["error"]
    applied = [e for e in p.orch.bus.history if e.name == "decision_applied"]
    assert len(applied) == 1
    assert outcome.status == ("completed" if ok[0]["result"]["action"] == "add_budget"
                              else "finished")


_AMOUNT_KEYS = ("tokens", "cost_usd", "time_s", "file_edits", "shell_commands")
_bad_amount = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 0, -1, 2**53 + 2, 1e300]),
    st.integers(max_value=0),
    st.floats(max_value=0),
    st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.none(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_junk_value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                        st.text(max_size=40), st.lists(st.integers(), max_size=3))
_bad_request = st.one_of(
    # add_budget for the paused task whose every amount is bad (or absent)
    st.fixed_dictionaries({"task_id": st.just("c1"), "action": st.just("add_budget")},
                          optional={k: _bad_amount for k in _AMOUNT_KEYS}),
    # anything at all in the fields, for a task that is not paused
    st.fixed_dictionaries({"task_id": st.one_of(st.just("ghost"), _junk_value)},
                          optional={"op": _junk_value.filter(lambda v: v != "paused"),
                                    "action": _junk_value,
                                    **{k: _junk_value for k in _AMOUNT_KEYS}}),
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"") + b"\n"),
)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(_bad_request, min_size=5, max_size=25))
def test_r3_4_property_generated_control_requests_never_stop_the_run(
    requests: list[bytes | dict[str, Any]],
) -> None:
    """#19 acceptance: generated malformed requests each get an error reply; the
    orchestrator is still running after them and takes the one good decision."""

    async def main() -> None:
        with _short_dir() as state:
            async with paused_orchestrator(state) as p:
                for item in requests:
                    reply = await p.raw(_encode(item, p.token))
                    assert reply is None or reply["ok"] is False, (item, reply)
                    if reply is None:  # only an empty line is a silent liveness probe
                        assert _encode(item, p.token).strip() == b""
                    assert p.orch.controller.is_paused("c1")
                _decide_ok(await p.request({"task_id": "c1", "action": "add_budget",
                                            "tokens": 50_000}))
            assert p.report[0].outcomes["c1"].status == "completed"

    run_real(main)


def test_r3_4_decide_cli_refuses_nan_and_inf_costs(tmp_path: Path) -> None:
    """#19: ``decide --cost nan`` / ``inf`` are refused by the CLI: one line, exit 2."""
    for bad in ("nan", "inf", "-inf", "-1", "0"):
        out = subprocess.run([CLI, "decide", "c1", "add", "--cost", bad, "--state-dir",
                              str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (bad, out)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "--cost" in lines[0], (bad, out.stderr)
        assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


# the venv's interpreter lives in root's home, out of another user's reach: the other
# user runs the system Python (same version) on our packages
SYSTEM_PYTHON = "/usr/bin/python3"
OUR_PACKAGES = ":".join([*map(str, Path(sys.prefix, "lib").glob("python3*/site-packages")),
                         str(Path(__file__).resolve().parents[1])])


def _system_python_matches() -> bool:
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return out.stdout.strip() == str(sys.version_info[:2])


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0 or not _system_python_matches(),
                    reason="switching to another uid needs root and a system Python like ours")
async def test_r3_4_decide_as_another_user_gets_one_line() -> None:
    """#19: ``decide`` run by another user (who cannot open the owner-only control
    directory) gets one line and exit 2, not a PermissionError traceback."""
    with _short_dir() as state:
        os.chmod(state, 0o755)  # the state dir is visible; control/ stays 0700
        async with paused_orchestrator(state) as p:
            out = await anyio.run_process(
                [SYSTEM_PYTHON, "-c", "from scheduler.cli._app import main; main()",
                 "decide", "c1", "finish", "--state-dir", str(state)],
                user=65534, check=False,
                env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": OUR_PACKAGES})
            still_paused = p.orch.controller.is_paused("c1")
            _decide_ok(await p.request({"task_id": "c1", "action": "finish"}))
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "control" in err and still_paused


def test_r3_4_second_decision_through_the_store_is_told_the_first_won(tmp_path: Path) -> None:
    """#19: with no orchestrator, a second ``decide`` for one pause is refused, naming the
    first; the first is the one applied at restart."""
    state = tmp_path / "st"

    async def pause() -> None:
        h = await open_harness(store=sqlite_store(state), tasks={"t": profile(tokens=1000)},
                               poll_s=None)
        await h.charge("t", tokens=1000)
        await h.store.aclose()

    run_virtual(pause)
    assert decide("t", "add", tokens=2_000, state_dir=state)["stored"] is True
    with pytest.raises(DecisionError, match="already has a decision: add_budget from cli"):
        decide("t", "finish", state_dir=state)

    async def restart() -> tuple[str, int | None]:
        h = await open_harness(store=sqlite_store(state), tasks={"t": profile(tokens=1000)})
        with anyio.fail_after(1):
            decision = await h.controller.wait_decision("t")
        await h.store.aclose()
        return decision.action, h.tracker.task_scope("t").limits.tokens

    assert run_virtual(restart) == ("add_budget", 3_000)


def test_r3_4_nan_amounts_refused_from_python_and_discarded_from_the_store(
    tmp_path: Path,
) -> None:
    """#19: NaN or inf never becomes budget: ``decide`` from Python refuses it, and a NaN
    decision an older version stored is discarded at start (it used to fail the task at
    every restart) so a new decision can be taken."""

    async def main() -> list[str]:
        h = await open_harness(store=sqlite_store(tmp_path), tasks={"t": profile(tokens=1000)},
                               poll_s=None)
        await h.charge("t", tokens=1000)
        for bad in ({"tokens": float("nan")}, {"cost_usd": float("inf")},
                    {"time_s": float("nan")}, {"tokens": 2**60}):
            with pytest.raises(DecisionError, match="positive amount"):
                await h.controller.decide("t", "add_budget", **bad)
        key = h.controller._key("t")  # <session>/<task>
        await h.store.put_state("decision", key, {"task_id": "t", "action": "add_budget",
                                                  "tokens": float("nan"), "source": "old"})
        await h.store.aclose()
        again = await open_harness(store=sqlite_store(tmp_path),
                                   tasks={"t": profile(tokens=1000)}, poll_s=None)
        assert await again.store.get_state("decision", key) is None
        reply = await again.controller.decide("t", "add_budget", tokens=500)
        with anyio.fail_after(1):
            await again.controller.wait_decision("t")
        await again.store.aclose()
        assert reply["accepted"] and again.tracker.task_scope("t").limits.tokens == 1_500
        return [e.name for e in again.named("decision_discarded")]

    assert run_virtual(main) == ["decision_discarded"]
