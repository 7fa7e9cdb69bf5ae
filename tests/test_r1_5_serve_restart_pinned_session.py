"""A ``vibe-engine serve`` whose config pins ``session_id`` serves again after Ctrl-C and a
restart, its key's budget counting both runs (R1.5, #21)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import anthropic
import pytest

from agents.fake_api import FakeAnthropicServer
from tests._anthropic_helpers import SECRET_KEY, fake_api
from tests._serve_helpers import BIN

__all__ = ["fake_api"]  # the fixture, imported for pytest

KEY = "sk-client-pinned"


def _serve_once(config: Path, cwd: Path) -> tuple[int, str, int]:
    """Start ``serve``, make one call if it started, Ctrl-C it: (exit code, its stderr's
    first line, the answer's tokens or -1)."""
    env = {**os.environ, "VIBE_PINNED_KEY": KEY, "UPSTREAM_KEY": SECRET_KEY}
    proc = subprocess.Popen([str(BIN), "serve", str(config), "--port", "0"], cwd=cwd,
                            env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    found = re.search(r"serve on (http://[\d.:]+)", first)
    tokens = -1
    if found:
        with anthropic.Anthropic(base_url=found[1], api_key=KEY, max_retries=0) as client:
            msg = client.messages.create(model="claude-haiku-4-5", max_tokens=32,
                                         messages=[{"role": "user", "content": "Hi."}])
        tokens = msg.usage.input_tokens + msg.usage.output_tokens
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the key's task ends as the run ends
    proc.communicate(timeout=60)
    return proc.returncode, first.strip(), tokens


@pytest.mark.slow
def test_r1_5_serve_with_a_pinned_session_id_serves_again_after_ctrl_c(
    fake_api: FakeAnthropicServer, tmp_path: Path,
) -> None:
    """R1.5: with ``session_id`` in its config, a ``serve`` stopped by Ctrl-C and started
    again refused to start, exit 2, "serve could not start: None": the session's key
    task had ended, so the continued session never ran it again.  The restarted serve
    answers, and the key's usage in ``report`` is both runs' -- what the API billed."""
    config = tmp_path / "serve.toml"
    config.write_text(
        'state_dir = "st"\nsession_id = "gateway"\n[serve]\n'
        f'upstream_base_url = "{fake_api.base_url}"\nupstream_key_env = "UPSTREAM_KEY"\n'
        '[[serve.keys]]\nname = "pinned"\nkey_env = "VIBE_PINNED_KEY"\n'
        'budget = { tokens = 100000 }\n')
    answered = []
    for _ in range(2):
        code, first, tokens = _serve_once(config, tmp_path)
        assert tokens > 0, (code, first)
        answered.append(tokens)
    out = subprocess.run([str(BIN), "report", "--json", "-c", str(config)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True)
    billed = fake_api.reported_totals()
    total = json.loads(out.stdout)["total"]
    assert total["calls"] == len(fake_api.reported) == 2
    assert total["tokens"] == sum(answered) == billed["input_tokens"] + billed["output_tokens"]
