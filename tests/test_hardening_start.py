"""What ``vibe-engine run`` refuses before it writes anything: a SQLite store URL whose
file is in doubt, a provider key no HTTP header can carry, a session id the store
already ran (R2.6, R3.4, R7.2).  The rule for bad input: one line, exit 2, nothing
written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scheduler import ConfigError
from scheduler.config import config_from_dict, sqlite_file
from scheduler.store import SqliteStore, open_store
from tests._cli_helpers import assert_one_line_exit_2, cli, files_under

SIMULATED = """
[provider.simulated]
time_scale = 0.01
failure_rate = { haiku = 0.0, sonnet = 0.0, opus = 0.0 }
"""
TASK = """
[[tasks]]
id = "q"
agent = "qa"
prompt = "Where is the config loaded?"
"""


def _toml(text: str) -> str:
    return text.replace("\\", "\\\\")


# -- the SQLite store URL ---------------------------------------------------------------------


def test_r2_6_sqlite_store_url_is_the_absolute_path_after_sqlite_slashes(tmp_path: Path) -> None:
    """The documented form ``sqlite:///var/lib/vibe/shared.db`` names that absolute file (as
    a ``file:`` URL does); SQLAlchemy's absolute form with four slashes names the same."""
    assert sqlite_file("sqlite:///var/lib/vibe/shared.db") == Path("/var/lib/vibe/shared.db")
    assert sqlite_file("sqlite:////var/lib/vibe/shared.db") == Path("/var/lib/vibe/shared.db")
    assert sqlite_file("sqlite") is None and sqlite_file("redis://h:1/0") is None
    store = open_store(f"sqlite://{tmp_path}/x.db", tmp_path / "st")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "x.db"


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///x.db", "sqlite://x.db", "sqlite:x.db",
                                 "sqlite:///tmp/", "sqlite:///tmp/a\x01.db"])
def test_r2_6_malformed_or_ambiguous_sqlite_urls_are_config_errors(url: str) -> None:
    """``sqlite:///x.db`` (``./x.db`` to SQLAlchemy, ``/x.db`` as a URL) and other
    spellings are refused naming the ``store`` field, never guessed."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({"store": url})
    assert err.value.field == "store"


def test_r2_6_run_with_sqlite_url_writes_the_absolute_file(tmp_path: Path) -> None:
    """``store = "sqlite:///<abs>/x.db"`` puts the database at ``/<abs>/x.db``, not under the
    working directory; an ambiguous URL stops the run in one line, nothing written."""
    cwd, db = tmp_path / "cwd", tmp_path / "data" / "x.db"
    cwd.mkdir()
    (cwd / "c.toml").write_text(_toml(f'state_dir = "st"\nstore = "sqlite://{db}"\n')
                                + SIMULATED + TASK)
    result = cli(["run", "c.toml", "--no-live", "--log-level", "warning"], cwd)
    assert result.code == 0, result
    assert db.is_file() and not (cwd / db.relative_to("/")).exists()
    (cwd / "bad.toml").write_text('state_dir = "st2"\nstore = "sqlite:///x.db"\n' + TASK)
    before = files_under(cwd)
    assert_one_line_exit_2(cli(["run", "bad.toml", "--no-live"], cwd), "store", "ambiguous")
    assert files_under(cwd) == before
    for argv in (["status", "--store", "sqlite:///x.db"], ["report", "--store", "sqlite:x"]):
        assert_one_line_exit_2(cli([*argv, "--state-dir", "st"], cwd), "--store")


# -- the provider key -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sk-ant-abc\n", "sk-ant abc", "sk-ant-\x1b[31mabc", "sk-\x7f"])
def test_r7_2_run_refuses_a_provider_key_no_header_can_carry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str,
) -> None:
    """A key with a control character, a space or a line break would fail every call of
    the run: refused at start, naming the field and not the key; nothing written."""
    monkeypatch.setenv("VIBE_TEST_PROVIDER_KEY", key)
    (tmp_path / "c.toml").write_text(
        'state_dir = "st"\n[provider]\nkind = "anthropic"\n'
        'base_url = "http://127.0.0.1:9"\napi_key_env = "VIBE_TEST_PROVIDER_KEY"\n' + TASK)
    line = assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], tmp_path),
                                  "provider.api_key_env", "VIBE_TEST_PROVIDER_KEY")
    assert "abc" not in line
    assert files_under(tmp_path) == {"c.toml"}


# -- a session id that already ran -------------------------------------------------------------


def test_r3_4_run_refuses_a_session_id_another_state_dir_ran_on_a_shared_store(
    tmp_path: Path,
) -> None:
    """Two state directories on one SQLite file: ``run`` with a session id the store already
    ran elsewhere is refused in one line (``resume`` continues it) instead of carrying on
    that session; nothing is written, not even the new state directory."""
    db = tmp_path / "shared.db"
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(_toml(
            f'state_dir = "st-{name}"\nstore = "sqlite://{db}"\nsession_id = "nightly"\n')
            + SIMULATED + TASK)
    first = cli(["run", "a.toml", "--no-live", "--log-level", "warning"], tmp_path)
    assert first.code == 0, first
    before = files_under(tmp_path)
    size = db.stat().st_size
    line = assert_one_line_exit_2(cli(["run", "b.toml", "--no-live"], tmp_path),
                                  "nightly", "st-a", "vibe-engine resume nightly")
    assert "--store" in line
    assert files_under(tmp_path) == before and db.stat().st_size == size


@pytest.mark.parametrize(("state", "elsewhere", "refused"), [
    ("running", True, False), ("completed", True, True), ("interrupted", True, True),
    ("running", False, True), ("completed", False, True),
])
def test_r3_4_a_running_shared_session_may_be_joined_an_ended_one_not(
    tmp_path: Path, state: str, elsewhere: bool, refused: bool,
) -> None:
    """Orchestrators sharing a session budget use one ``session_id`` from their own state
    directories (docs/scale-out.md): a *running* session of another state directory is
    joined; one that ended anywhere, or any one of this state directory, is refused."""
    import anyio

    from scheduler.cli._sessions import check_new_session
    from scheduler.core import SessionError
    from scheduler.store import SessionRecord

    db = tmp_path / "shared.db"
    ran_in = tmp_path / ("other" if elsewhere else "here")

    async def record() -> None:
        store = SqliteStore(db)
        await store.open()
        rec = SessionRecord("nightly", state=state, state_dir=str(ran_in))  # type: ignore[arg-type]
        await store.put_state("session", "nightly", rec.to_dict())
        await store.aclose()

    anyio.run(record)
    config = config_from_dict({"state_dir": str(tmp_path / "here"), "store": f"sqlite://{db}",
                               "session_id": "nightly"})
    if refused:
        with pytest.raises(SessionError, match="vibe-engine resume nightly"):
            check_new_session(config)
    else:
        check_new_session(config)


@pytest.mark.parametrize("sid", ["", "a\nb", "a b", "\x1b[2Jx", "x" * 129, "a/b"])
def test_r7_2_hostile_session_ids_one_line_exit_2_nothing_written(tmp_path: Path,
                                                                  sid: str) -> None:
    """A session id is shown by status, logs and the ``resume`` hint: an empty one (the
    run silently got a generated id), a line break, an escape sequence or a slash is
    refused naming ``session_id``, as a task id would be."""
    (tmp_path / "c.toml").write_text(
        f'state_dir = "st"\nsession_id = {_quoted(sid)}\n' + SIMULATED + TASK)
    assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], tmp_path), "session_id")
    assert files_under(tmp_path) == {"c.toml"}


def _quoted(text: str) -> str:
    """``text`` as a TOML basic string."""
    return '"' + "".join(ch if ch.isalnum() or ch in " ./-[" else f"\\u{ord(ch):04x}"
                         for ch in text) + '"'


# -- URLs and folders a run or a server could never use ----------------------------------------


@pytest.mark.parametrize(("text", "field"), [
    ('[provider]\nkind = "anthropic"\nbase_url = "http://127.0.0.1:9/\\n"', "provider.base_url"),
    ('[provider]\nkind = "anthropic"\nbase_url = "ftp://example.com"', "provider.base_url"),
    ('[provider]\nkind = "anthropic"\nbase_url = "not a url"', "provider.base_url"),
    ('[provider]\nkind = "anthropic"\nbase_url = "http://h:99999"', "provider.base_url"),
    ('state_dir = ""', "state_dir"),
    ('state_dir = "st\\n"', "state_dir"),
])
def test_r7_2_unusable_base_url_or_state_dir_one_line_exit_2_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, field: str,
) -> None:
    """A base URL with a line break (a traceback from the HTTP client), another scheme or
    no host (every call failing once the run started), an empty state directory (the
    working directory filled with state) or one with a control character: refused at
    start naming the field."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    (tmp_path / "c.toml").write_text(text + "\n" + TASK)
    assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], tmp_path), field)
    assert files_under(tmp_path) == {"c.toml"}


@pytest.mark.parametrize("url", ["ftp://example.com", "http://x\\ny", "file:///etc/passwd"])
def test_r7_2_serve_refuses_an_unusable_upstream_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str,
) -> None:
    """``serve.upstream_base_url`` is checked like ``provider.base_url``: one line, exit 2,
    nothing written (it served, or stopped with a traceback)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("VIBE_TEST_CLIENT_KEY", "client-key")
    (tmp_path / "c.toml").write_text(
        f'state_dir = "st"\n[serve]\nupstream_base_url = "{url}"\n'
        '[[serve.keys]]\nname = "a"\nkey_env = "VIBE_TEST_CLIENT_KEY"\n')
    assert_one_line_exit_2(cli(["serve", "c.toml", "--port", "0"], tmp_path),
                           "serve.upstream_base_url")
    assert files_under(tmp_path) == {"c.toml"}


def _unusable_textfile(root: Path, kind: str) -> str:
    if kind == "folder":
        (root / "m.prom").mkdir()
        return "m.prom"
    if kind == "fifo":
        os.mkfifo(root / "m.prom")
        return "m.prom"
    (root / "file").write_text("")
    return "file/m.prom"


@pytest.mark.parametrize("kind", ["folder", "file-as-folder", "fifo"])
@pytest.mark.parametrize("command", ["run", "serve"])
def test_r7_2_metrics_textfile_that_cannot_be_written_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, command: str,
) -> None:
    """``metrics.textfile`` naming a folder, a path under a file, or a FIFO (which the
    rename would replace) is refused at start naming the field, nothing written: it was
    found only when the run ended, as a warning after exit 0 with no metrics."""
    monkeypatch.setenv("VIBE_TEST_CLIENT_KEY", "client-key")
    textfile = _unusable_textfile(tmp_path, kind)
    before = files_under(tmp_path) | {"c.toml"}
    body = (SIMULATED + TASK if command == "run" else
            '[serve]\nupstream_base_url = "http://127.0.0.1:9"\n'
            '[[serve.keys]]\nname = "a"\nkey_env = "VIBE_TEST_CLIENT_KEY"\n')
    (tmp_path / "c.toml").write_text(
        f'state_dir = "st"\n[metrics]\ntextfile = "{textfile}"\n' + body)
    argv = ["run", "c.toml", "--no-live"] if command == "run" else ["serve", "c.toml",
                                                                      "--port", "0"]
    assert_one_line_exit_2(cli(argv, tmp_path), "metrics.textfile")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "folder", "link-to-fifo", "default-is-folder"])
def test_r2_6_sqlite_store_that_is_no_regular_file_refused_nothing_written(
    tmp_path: Path, kind: str,
) -> None:
    """A SQLite store path naming a FIFO, a folder or a device (``sqlite:////dev/null``)
    is refused naming ``store``, and nothing is written: SQLite failed only once the
    state directory and its lock were made (and wrote ``/dev/null-journal`` beside the
    device)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    db = tmp_path / "x.db"
    if kind in ("fifo", "link-to-fifo"):
        os.mkfifo(tmp_path / "fifo")
        db = tmp_path / "fifo" if kind == "fifo" else db
        if kind == "link-to-fifo":
            db.symlink_to(tmp_path / "fifo")
        store = f"sqlite://{db}"
    elif kind == "folder":
        db.mkdir()
        store = f"sqlite://{db}"
    else:
        (cwd / "st" / "vibe.db").mkdir(parents=True)
        store = "sqlite"
    (cwd / "c.toml").write_text(_toml(f'state_dir = "st"\nstore = "{store}"\n')
                                + SIMULATED + TASK)
    before = files_under(tmp_path)
    assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], cwd), "store",
                           "not a SQLite file")
    assert files_under(tmp_path) == before


def test_r7_2_a_store_that_cannot_be_opened_leaves_no_state_dir(tmp_path: Path) -> None:
    """A store refused only when opened (a file that is not a database) ends the run in
    one line, exit 2, and the state directory and lock file the run made are gone."""
    (tmp_path / "junk.db").write_text("not a database\n")
    (tmp_path / "c.toml").write_text(
        _toml(f'state_dir = "st/inner"\nstore = "sqlite://{tmp_path}/junk.db"\n')
        + SIMULATED + TASK)
    before = files_under(tmp_path)
    assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], tmp_path), "junk.db")
    assert files_under(tmp_path) == before


def test_r7_2_an_unreachable_redis_store_is_named_without_its_password(tmp_path: Path) -> None:
    """``status --store redis://:PASSWORD@host`` on an unreachable Redis: one line naming
    the server, never the password (the line ends up in terminals, logs and CI output)."""
    (tmp_path / "st").mkdir()
    for url in ("redis://:s3cret-pw@127.0.0.1:1/0", "redis://u:s3cret-pw@127.0.0.1:1/0",
                "redis://127.0.0.1:1/0?password=s3cret-pw"):
        line = assert_one_line_exit_2(
            cli(["status", "--state-dir", "st", "--store", url], tmp_path), "127.0.0.1:1")
        assert "s3cret" not in line and "***" in line, line


@pytest.mark.parametrize("argv", [["run", "c.toml", "--no-live"], ["resume"], ["demo"],
                                  ["status"], ["report"], ["decide", "t", "add"]])
def test_r7_2_state_dir_option_with_a_control_character_one_line_exit_2(
    tmp_path: Path, argv: list[str],
) -> None:
    """``--state-dir`` is held to the config's rule: ``run --state-dir $'st\\n2'`` made a
    folder with a line break in its name (the option skipped the config's checks)."""
    (tmp_path / "c.toml").write_text('state_dir = "st"\n' + SIMULATED + TASK)
    assert_one_line_exit_2(cli([*argv, "--state-dir", "st\n2"], tmp_path), "--state-dir")
    assert files_under(tmp_path) == {"c.toml"}


def test_r2_6_sqlite_url_whose_folder_exists_only_relative_is_refused(tmp_path: Path) -> None:
    """``sqlite:///data/x.db`` written for ``./data/x.db`` (SQLAlchemy's reading) while
    ``/data`` does not exist: refused naming ``store`` and the absolute URL to write,
    instead of silently making ``/data`` and an empty database there."""
    import uuid

    name = f"vibe-test-{uuid.uuid4().hex[:8]}"
    assert not Path("/", name).exists()
    (tmp_path / name).mkdir()
    (tmp_path / "c.toml").write_text(
        f'state_dir = "st"\nstore = "sqlite:///{name}/x.db"\n' + SIMULATED + TASK)
    line = assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], tmp_path),
                                  "store", "ambiguous")
    assert f"sqlite://{tmp_path / name / 'x.db'} " in line
    assert files_under(tmp_path) == {"c.toml", name} and not Path("/", name).exists()


@pytest.mark.parametrize(("env", "field"), [
    ({"VIBE_TEST_HOOK_URL": "https://hooks.example.com/x\n"}, "alerts.webhooks[0].url_env"),
    ({"VIBE_TEST_HOOK_URL": "hooks.example.com/x"}, "alerts.webhooks[0].url_env"),
    ({"VIBE_TEST_HOOK_URL": "https://hooks.example.com/x", "VIBE_TEST_HOOK_AUTH": "Bearer\r\nX: 1"},
     "alerts.webhooks[0].headers.Authorization"),
])
def test_r3_3_webhook_secrets_from_the_environment_checked_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str,
) -> None:
    """A webhook URL or header value read from the environment that no request can carry
    (a line break, no scheme: every notification fails) is refused at start like the provider's
    key, naming the field and not the value; nothing written."""
    monkeypatch.setenv("VIBE_TEST_HOOK_AUTH", "Bearer-token")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "c.toml").write_text(
        'state_dir = "st"\n[[alerts.webhooks]]\nurl_env = "VIBE_TEST_HOOK_URL"\n'
        'headers = { Authorization = "VIBE_TEST_HOOK_AUTH" }\n' + SIMULATED + TASK)
    line = assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], tmp_path), field)
    assert "example.com" not in line and "Bearer" not in line
    assert files_under(tmp_path) == {"c.toml"}


@pytest.mark.parametrize("ttl", [0.03, 0.5, 0.999])
def test_r1_2_a_budget_hold_ttl_below_a_second_refused_nothing_written(
    tmp_path: Path, ttl: float,
) -> None:
    """R1.2 across processes: ``distributed.hold_ttl_s`` below 1 s is refused naming the
    field (with 0.03 s, holds of a 150-task run lapsed mid-call between their renewals,
    every third of the TTL, so other processes could spend the same budget); 1 s is
    taken."""
    (tmp_path / "c.toml").write_text(
        f'state_dir = "st"\n[distributed]\nhold_ttl_s = {ttl}\n' + SIMULATED + TASK)
    assert_one_line_exit_2(cli(["run", "c.toml", "--no-live"], tmp_path),
                           "distributed.hold_ttl_s", "at least 1 s")
    assert files_under(tmp_path) == {"c.toml"}
    assert config_from_dict({"distributed": {"hold_ttl_s": 1.0}}).distributed.hold_ttl_s == 1.0
