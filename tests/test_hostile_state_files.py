"""State files a previous run, a crash or a full disk left broken never take a run down:
``status.json`` that cannot be written only stops showing the run (the store keeps what it
spent), and a garbled control token is replaced by a new secret at the next run."""

from __future__ import annotations

from pathlib import Path

from tests._cli_helpers import assert_one_line_exit_2, cli, files_under

CONFIG = """\
state_dir = "state"
store = "sqlite"
[provider]
kind = "simulated"
[provider.simulated]
time_scale = 0
[[tasks]]
id = "fix"
agent = "coder"
prompt = "Fix the off-by-one error in pagination"
params = { steps = 2 }
[[tasks]]
id = "ask"
agent = "qa"
prompt = "What is a lease?"
"""


def _run(root: Path) -> None:
    (root / "c.toml").write_text(CONFIG)
    result = cli(["run", "c.toml", "--no-live", "--log-level", "error"], root)
    assert result.code == 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]


def test_r2_6_a_status_json_that_cannot_be_written_does_not_end_the_run(tmp_path: Path) -> None:
    """R2.6: ``status.json`` made a folder (as a full disk refuses it: an ``OSError`` on each
    rewrite) -- the tasks still complete, their usage is recorded, no temporary file stays."""
    state = tmp_path / "state"
    (state / "status.json").mkdir(parents=True)
    _run(tmp_path)
    assert (state / "tasks" / "fix" / "usage.json").is_file()
    assert (state / "tasks" / "ask" / "result.json").is_file()
    assert not list(state.glob(".status.json.*"))


def test_r3_4_a_garbled_control_token_is_replaced_and_the_run_goes_on(tmp_path: Path) -> None:
    """R3.4: a control token file a crash left empty or garbled (not even ASCII) does not
    stop the next run: a new owner-only secret is written and decisions are accepted."""
    for name, garbage in (("bytes", b"\x9f\xff\x00garbage"), ("empty", b"")):
        root = tmp_path / name
        token = root / "state" / "control" / "token"
        token.parent.mkdir(parents=True, mode=0o700)
        token.write_bytes(garbage)
        token.chmod(0o600)
        _run(root)
        text = token.read_text(encoding="ascii")
        assert len(text) == 64 and int(text, 16) >= 0, text
        assert token.stat().st_mode & 0o077 == 0


def test_r2_6_status_refuses_a_named_sqlite_store_that_is_not_there(tmp_path: Path) -> None:
    """R2.6: ``status --store sqlite:///PATH`` with a PATH that holds no store (a typo) next
    to a state directory a run left was shown as an empty store, exit 0; it is one line,
    exit 2, naming the path, and creates nothing."""
    _run(tmp_path)
    before = files_under(tmp_path)
    typo = tmp_path / "state" / "vibe-typo.db"
    result = cli(["status", "--state-dir", "state", "--store", f"sqlite://{typo}"], tmp_path)
    assert_one_line_exit_2(result, str(typo))
    assert files_under(tmp_path) == before
