"""R1.3 config files as users hand them over: a byte-order mark, a FIFO or a device named as
the config, a key given twice, a model name outside the catalog.  Each either loads or is
refused in one line naming the field, exit 2, nothing written (R7.2)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from scheduler.config import load_config
from tests._cli_helpers import assert_one_line_exit_2, cli, files_under

BOM = b"\xef\xbb\xbf"
TASK_TOML = ('state_dir = "st"\n[provider.simulated]\ntime_scale = 0\n'
             '[[tasks]]\nid = "t"\nagent = "qa"\nprompt = "What is x?"\n')
TASK_YAML = ("state_dir: st\nprovider:\n  simulated:\n    time_scale: 0\n"
             "tasks:\n  - {id: t, agent: qa, prompt: \"What is x?\"}\n")
TASK_JSON = ('{"state_dir": "st", "provider": {"simulated": {"time_scale": 0}},\n'
             ' "tasks": [{"id": "t", "agent": "qa", "prompt": "What is x?"}]}\n')


@pytest.mark.parametrize(("name", "text"), [
    ("c.toml", TASK_TOML), ("c.yaml", TASK_YAML), ("c.json", TASK_JSON)])
def test_r1_3_a_config_starting_with_a_utf8_bom_runs(tmp_path: Path, name: str,
                                                     text: str) -> None:
    """A UTF-8 byte-order mark (Windows editors write one) is skipped: the TOML file was
    refused as 'malformed TOML: Invalid statement (at line 1, column 1)'; JSON files are
    read as JSON (they were read as TOML)."""
    (tmp_path / name).write_bytes(BOM + text.encode())
    result = cli(["run", name, "--no-live", "--log-level", "error"], tmp_path)
    assert result.code == 0, result
    assert (tmp_path / "st").is_dir()


def _fifo_writer(fifo: Path) -> threading.Thread:
    """Feeds the FIFO once a reader opens it (a reader that waited for a writer, as the
    config loader did, gets a malformed file rather than hanging the test)."""

    def write() -> None:
        try:
            with fifo.open("wb") as w:
                w.write(b"a = [\n")
        except OSError:  # the reader closed it unread
            pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "huge"])
def test_r1_3_a_config_that_is_no_regular_file_is_refused_at_once(tmp_path: Path,
                                                                  kind: str) -> None:
    """A FIFO named as the config blocked ``run`` until something wrote to it; a
    directory gave 'cannot read: Is a directory'; a device was read until 16 MiB had
    come; a sparse 3 GiB file likewise.  Each is refused before it is read."""
    target, expected, writer = "c.toml", "not a regular file", None
    if kind == "fifo":
        os.mkfifo(tmp_path / target)
        writer = _fifo_writer(tmp_path / target)
    elif kind == "directory":
        (tmp_path / target).mkdir()
    elif kind == "device":
        target = "/dev/zero"
    else:
        with (tmp_path / target).open("wb") as f:
            f.truncate(3 * 1024**3)
        expected = "larger than 16 MiB"
    before = files_under(tmp_path)
    result = cli(["run", target, "--no-live"], tmp_path)
    if writer is not None:  # let a writer still waiting for a reader go
        fd = os.open(tmp_path / target, os.O_RDONLY | os.O_NONBLOCK)
        writer.join()
        os.close(fd)
    line = assert_one_line_exit_2(result, "config file", expected)
    assert kind != "fifo" or "(a FIFO)" in line, line
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(("name", "text", "field", "where"), [
    ("c.yaml", "state_dir: st\nseed: 1\nseed: 2\n", "seed='seed'", "at line 3 (first given "
     "at line 2)"),
    ("c.yaml", "state_dir: st\nbudgets:\n  session: {tokens: 10, tokens: 20}\n",
     "budgets.session.tokens", "at line 3"),
    ("c.yaml", "state_dir: st\ntasks:\n  - id: t\n    agent: qa\n    agent: coder\n",
     "tasks.0.agent", "at line 5 (first given at line 4)"),
    ("c.json", '{"state_dir": "st",\n "seed": 1,\n "seed": 2}\n', "seed='seed'",
     "at line 3 (first given at line 2)"),
    # tabs: not YAML, so no line, but the key
    ("c.json", '{"state_dir": "st", "budgets": {\n\t"session": {}, "session": {}}}\n',
     "'session'", "given twice"),
])
def test_r1_3_a_key_given_twice_is_refused_naming_it(tmp_path: Path, name: str, text: str,
                                                     field: str, where: str) -> None:
    """YAML and JSON loaders keep the last of two equal keys silently (``seed: 1`` then
    ``seed: 2`` ran with seed 2); TOML already refused it."""
    (tmp_path / name).write_text(text)
    result = cli(["run", name, "--no-live"], tmp_path)
    assert_one_line_exit_2(result, field, where)
    assert files_under(tmp_path) == {name}


SERVE_KEY = ('[[serve.keys]]\nname = "a"\nkey_env = "VIBE_TEST_KEY"\n'
             'allowed_models = ["sonnet", "claude-haiku-4-5", "sonet"]\n')


@pytest.mark.parametrize(("command", "text", "field"), [
    (["serve", "c.toml", "--port", "0"], SERVE_KEY, "serve.keys.0.allowed_models.2='sonet'"),
    (["run", "c.toml", "--no-live"], '[[tasks]]\nid = "t"\nagent = "coder"\n'
     'params = {model = "opsu"}\n', "tasks.0.params.model='opsu'"),
    (["run", "c.toml", "--no-live"], '[[tasks]]\nid = "t"\nagent = "coder"\n'
     'params = {model = 3}\n', "tasks.0.params.model=3"),
    (["status", "--config", "c.toml"], SERVE_KEY, "serve.keys.0.allowed_models.2"),
])
def test_r1_3_a_model_outside_the_catalog_is_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], text: str,
    field: str,
) -> None:
    """A typo in a serve key's ``allowed_models`` was accepted and only ever refused the
    key's calls of that model (403); a task's ``params.model`` typo started the run and
    failed the task (exit 1, state written)."""
    monkeypatch.setenv("VIBE_TEST_KEY", "k")
    (tmp_path / "c.toml").write_text('state_dir = "st"\n' + text)
    line = assert_one_line_exit_2(cli(command, tmp_path), field, "unknown model; known: haiku")
    assert "sonnet" in line
    assert files_under(tmp_path) == {"c.toml"}


def test_r1_3_allowed_models_take_catalog_names_and_model_ids(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('state_dir = "st"\n' + SERVE_KEY.replace(', "sonet"', ""))
    config = load_config(tmp_path / "c.toml")
    assert config.serve.keys[0].allowed_models == ("sonnet", "claude-haiku-4-5")


SERVE = ('serve.upstream_base_url = "http://127.0.0.1:9"\n'
         '[[serve.keys]]\nname = "a"\nkey_env = "VIBE_TEST_KEY"\n')


@pytest.mark.parametrize(("setting", "field"), [
    ('serve.host = ""', "serve.host=''"),  # bound every interface, announced http://:PORT
    ('serve.host = "a\\u0000b"', "serve.host"),  # a traceback (TypeError), exit 1
    ('serve.upstream_key_env = "A\\u0000B"', "serve.upstream_key_env"),  # never set: served
    ('serve.routing_alias = " "', "serve.routing_alias"),
    # a client naming sonnet was routed to whatever the router picked
    ('serve.routing_alias = "sonnet"', "serve.routing_alias='sonnet'"),
    ('serve.routing_alias = "claude-sonnet-4-6"', "serve.routing_alias"),
    ('models.haiku.model_id = ""', "models.haiku.model_id"),
    ('models.haiku.model_id = "claude-haiku-4-5\\n"', "models.haiku.model_id"),
    ('provider.api_key_env = "A=B"', "provider.api_key_env"),
])
def test_r1_3_hosts_model_ids_aliases_and_variable_names_must_be_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, field: str
) -> None:
    """An empty host, model id or alias, or one holding a space or a control character,
    and a variable name no environment can hold were accepted; ``serve`` then listened
    on every interface (host ""), crashed with a traceback (a NUL in the host) or served
    without its upstream key."""
    monkeypatch.setenv("VIBE_TEST_KEY", "k")
    (tmp_path / "c.toml").write_text(f'state_dir = "st"\n{setting}\n{SERVE}')
    result = cli(["serve", "c.toml", "--port", "0"], tmp_path)
    assert_one_line_exit_2(result, field)
    assert files_under(tmp_path) == {"c.toml"}


def test_r1_3_serve_host_option_a_control_character_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--host`` with a NUL (possible from Python, not from a shell) gave a traceback."""
    monkeypatch.setenv("VIBE_TEST_KEY", "k")
    (tmp_path / "c.toml").write_text(f'state_dir = "st"\n{SERVE}')
    result = cli(["serve", "c.toml", "--port", "0", "--host", "a\x00b"], tmp_path)
    assert_one_line_exit_2(result, "serve.host")
    assert files_under(tmp_path) == {"c.toml"}


@pytest.mark.parametrize(("agent", "params", "field"), [
    ("steps", '{steps = "x"}', "tasks.0.params.steps='x'"),  # int("x"): a traceback, exit 1
    ("steps", "{steps = nan}", "tasks.0.params.steps"),
    ("steps", "{steps = inf}", "tasks.0.params.steps"),
    ("steps", "{steps = [1]}", "tasks.0.params.steps"),
    ("steps", "{steps = -1}", "tasks.0.params.steps=-1"),
    ("qa", "{max_tokens = 0}", "tasks.0.params.max_tokens=0"),
    ("qa", '{difficulty = "hard"}', "tasks.0.params.difficulty='hard'"),
    ("coder", '{max_turns = "many"}', "tasks.0.params.max_turns"),
    ("refactor", "{files = [1, 2]}", "tasks.0.params.files.0=1"),
])
def test_r1_3_built_in_agents_params_are_checked_at_load(tmp_path: Path, agent: str,
                                                         params: str, field: str) -> None:
    """A built-in agent's ``params`` of the wrong type or range started the run and the
    agent crashed on ``int()``/``float()`` at run time (a traceback in the log, exit 1,
    state written); they are refused before anything is written."""
    (tmp_path / "c.toml").write_text(
        f'state_dir = "st"\n[[tasks]]\nid = "t"\nagent = "{agent}"\nparams = {params}\n')
    result = cli(["run", "c.toml", "--no-live"], tmp_path)
    assert_one_line_exit_2(result, field)
    assert files_under(tmp_path) == {"c.toml"}


@pytest.mark.parametrize("target", ["st/vibe.db", "c.toml", "notes.txt"])
def test_r7_2_report_html_never_replaces_a_file_that_is_no_report(tmp_path: Path,
                                                                  target: str) -> None:
    """``report --html st/vibe.db`` replaced the run's store with the HTML page (and
    ``--html c.toml`` the config): every recorded session lost, exit 0."""
    (tmp_path / "c.toml").write_text(TASK_TOML)
    assert cli(["run", "c.toml", "--no-live", "--log-level", "error"], tmp_path).code == 0
    (tmp_path / "notes.txt").write_text("mine\n")
    before = (tmp_path / target).read_bytes()
    result = cli(["report", "-c", "c.toml", "--html", target], tmp_path)
    assert_one_line_exit_2(result, "--html", "not an HTML page")
    assert (tmp_path / target).read_bytes() == before
    again = cli(["report", "-c", "c.toml", "--html", "r.html"], tmp_path)
    assert again.code == 0 and (tmp_path / "r.html").read_bytes().startswith(b"<!DOCTYPE")
    assert cli(["report", "-c", "c.toml", "--html", "r.html"], tmp_path).code == 0


HUGE = "9" * 5000


@pytest.mark.parametrize(("name", "text", "field"), [
    ("c.toml", f"seed = {HUGE}\n", "an integer too long to read"),  # a ValueError traceback
    ("c.yaml", f"seed: {HUGE}\n", "an integer too long to read"),
    ("c.json", f'{{"seed": {HUGE}}}', "an integer too long to read"),
    # mkdir raised UnicodeEncodeError: a traceback
    ("c.yaml", 'state_dir: "st\\ud800"\n', "state_dir='st\\ud800'"),
    ("c.json", '{"state_dir": "st", "tasks": [{"id": "t", "agent": "qa", '
     '"prompt": "a \\udfff"}]}', "tasks.0.prompt"),
    ("c.json", '{"state_dir": "st", "\\ud800": 1}', "\\ud800"),
])
def test_r1_3_numbers_too_long_and_lone_surrogates_are_one_line(
    tmp_path: Path, name: str, text: str, field: str
) -> None:
    """An integer of more than 4,300 digits (any format) and a string with a lone
    surrogate (a JSON or YAML escape) ended ``run`` with a traceback."""
    (tmp_path / name).write_text(text)
    assert_one_line_exit_2(cli(["run", name, "--no-live"], tmp_path), field)
    assert files_under(tmp_path) == {name}


@pytest.mark.redis
def test_r7_2_a_redis_database_out_of_range_is_one_line(tmp_path: Path) -> None:
    """``store = "redis://…/99"`` on a server with 16 databases ended ``run`` with a
    ``ResponseError: DB index is out of range`` traceback."""
    from tests._redis_helpers import REDIS_URL, redis_or_skip

    redis_or_skip().close()
    url = REDIS_URL.rsplit("/", 1)[0] + "/99999"
    (tmp_path / "c.toml").write_text(f'state_dir = "st"\nstore = "{url}"\n')
    result = cli(["run", "c.toml", "--no-live", "--log-level", "error"], tmp_path)
    assert_one_line_exit_2(result, "Redis refused the connection", "DB index")
