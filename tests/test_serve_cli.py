"""``vibe-engine serve`` refuses bad input in one line, exit 2, nothing written (#21)."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests._serve_helpers import BIN

KEY = '[[serve.keys]]\nname = "a"\nkey_env = "VIBE_TEST_UNSET_KEY"\n'


def _serve(tmp_path: Path, config: str, *args: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "serve.toml"
    path.write_text('state_dir = "st"\n[serve]\nupstream_base_url = "http://127.0.0.1:9"\n'
                    + config)
    env = {**{k: v for k, v in os.environ.items() if k != "VIBE_TEST_UNSET_KEY"}, **(env or {})}
    return subprocess.run([str(BIN), "serve", str(path), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_21_serve_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path) -> None:
    """#21: an unset key variable, no keys, a key with two sources, half a TLS pair, a
    port in use, a host that is no address, an empty ``--host`` and a ping interval too
    short for a held stream each name the field in one line, exit 2, and write no state."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        cases = [
            (KEY, ("--port", "0"), "serve.keys.0.key_env"),
            ("", ("--port", "0"), "serve.keys"),
            (KEY + 'key_sha256 = "' + "0" * 64 + '"\n', ("--port", "0"), "key_env"),
            (KEY, ("--port", "0", "--ssl-certfile", "cert.pem"), "--ssl-certfile"),
            (KEY, ("--port", port), "serve.port"),
            ('host = "no-such-host.invalid"\n' + KEY, ("--port", "0"),
             "serve.host='no-such-host.invalid'"),
            # a held stream would spin sending pings
            ("ping_interval_s = 1e-300\n" + KEY, ("--port", "0"), "serve.ping_interval_s"),
            # an empty --host was taken as no --host: serve.host, silently
            (KEY, ("--port", "0", "--host", ""), "--host"),
            (KEY, ("--port", "0", "--host", " "), "--host"),
        ]
        for config, args, field in cases:
            out = _serve(tmp_path, config, *args)
            lines = [line for line in out.stderr.splitlines() if line.strip()]
            assert out.returncode == 2 and len(lines) == 1, (field, out.stderr)
            assert field in lines[0], (field, lines[0])
            assert not (tmp_path / "st").exists(), field


@pytest.mark.parametrize(("variable", "field"), [
    ("VIBE_TEST_UNSET_KEY", "serve.keys.0.key_env"),
    ("VIBE_TEST_UPSTREAM_KEY", "serve.upstream_key_env"),
])
@pytest.mark.parametrize("value", ["sk-abc\n", "sk abc", "sk-\x01abc", "sk-é"])
def test_21_a_key_no_http_header_can_carry_is_refused_at_start(
    tmp_path: Path, variable: str, field: str, value: str,
) -> None:
    """#21: a client or upstream key holding a newline (read from a file), a space or a
    control character started serve, and then every request failed (the upstream's as a
    400 "a header … holds a line break", blaming the client): it is refused at start,
    naming the field, in one line, exit 2, nothing written, the key never shown."""
    path = tmp_path / "serve.toml"
    path.write_text('state_dir = "st"\n[serve]\nupstream_base_url = "http://127.0.0.1:9"\n'
                    'upstream_key_env = "VIBE_TEST_UPSTREAM_KEY"\n' + KEY)
    env = {**os.environ, "VIBE_TEST_UNSET_KEY": "sk-good", "VIBE_TEST_UPSTREAM_KEY": "up",
           variable: value}
    out = subprocess.run([str(BIN), "serve", str(path), "--port", "0"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert field in lines[0] and "abc" not in lines[0], lines[0]
    assert not (tmp_path / "st").exists()


def test_r7_2_a_second_serve_on_a_state_directory_in_use_is_one_line_exit_2(
    tmp_path: Path,
) -> None:
    """R7.2: ``serve`` on a state directory another orchestrator holds (``serve`` started
    twice) failed with a 200-line traceback of a task group holding two errors; it is one
    line naming the directory and the holder's pid, exit 2, and the holder's files stay."""
    state = tmp_path / "st"
    state.mkdir(mode=0o700)
    lock = state / "orchestrator.lock"
    lock.write_text("4242\n")
    lock.chmod(0o600)
    with lock.open("r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running orchestrator does
        out = _serve(tmp_path, KEY, "--port", "0", env={"VIBE_TEST_UNSET_KEY": "sk-test"})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert "state directory st is in use" in lines[0] and "4242" in lines[0], lines
    assert {p.name for p in state.iterdir()} == {"orchestrator.lock"}


def test_21_two_keys_with_one_secret_are_refused_at_start(tmp_path: Path) -> None:
    """#21: two ``[[serve.keys]]`` entries reading one secret (a copied entry) were served:
    every request was charged to the last of them and the first one's budget silently
    never used.  One line names the second entry and the first, exit 2, nothing written."""
    second = KEY.replace('name = "a"', 'name = "b"')
    out = _serve(tmp_path, KEY + second, "--port", "0", env={"VIBE_TEST_UNSET_KEY": "sk-x"})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert "serve.keys.1.key_env" in lines[0] and "serve.keys.0 ('a')" in lines[0], lines
    assert not (tmp_path / "st").exists()
