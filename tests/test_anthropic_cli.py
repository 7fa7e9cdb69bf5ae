"""``vibe-engine fake-api`` + ``vibe-engine run`` with provider.kind = "anthropic" (R7.2)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "vibe-engine"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_api_process() -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen([str(BIN), "fake-api", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the socket is bound
        assert f"127.0.0.1:{port}" in line, line
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
def test_r7_2_run_uses_the_real_provider_against_fake_api(
    fake_api_process: int, tmp_path: Path
) -> None:
    """With provider.kind = "anthropic" and a key in the environment, ``run`` calls the
    API at provider.base_url through the SDK; the usage table shows what it charged."""
    cfg = tmp_path / "vibe.toml"
    cfg.write_text(
        'state_dir = "st"\nstore = "sqlite"\n'
        f'[provider]\nkind = "anthropic"\nbase_url = "http://127.0.0.1:{fake_api_process}"\n'
        'api_key_env = "VIBE_CLI_TEST_KEY"\n'
        '[[tasks]]\nid = "q1"\nagent = "qa"\nprompt = "What does a lease do?"\n'
    )
    env = {**os.environ, "COLUMNS": "200", "VIBE_CLI_TEST_KEY": "sk-ant-cli-test-key-0042"}
    out = subprocess.run([str(BIN), "run", str(cfg)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "completed" in out.stdout and "total" in out.stdout
    assert "sk-ant-cli-test-key-0042" not in out.stdout + out.stderr


@pytest.mark.slow
def test_run_without_the_key_is_a_clear_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "vibe.toml"
    cfg.write_text('state_dir = "st"\n[provider]\nkind = "anthropic"\n'
                   'api_key_env = "VIBE_CLI_TEST_MISSING_KEY"\n')
    env = {k: v for k, v in os.environ.items() if k != "VIBE_CLI_TEST_MISSING_KEY"}
    out = subprocess.run([str(BIN), "run", str(cfg)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**env, "COLUMNS": "200"})
    assert out.returncode == 2
    assert "VIBE_CLI_TEST_MISSING_KEY" in out.stderr
