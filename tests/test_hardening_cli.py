"""Bad config and bad command lines: one line naming the field or option, exit 2, nothing
written (issue #19; R7.2 command line, R1.3 config).

Hypothesis generates malformed configs (a number field set to ``inf``, NaN,
``true``, a table, a number too large), whole malformed files (random bytes,
random tables), bad task ids and bad option values; the rule is checked on the
command line a user runs (``vibe-engine run CONFIG`` and the other commands),
in-process for speed and through the real binary for a few.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scheduler import ConfigError, TaskSpec, VibeConfig
from scheduler.config import load_config
from scheduler.testing import build_orchestrator, run_virtual
from tests._cli_helpers import (
    assert_one_line_exit_2,
    cli,
    files_under,
    fresh_dir,
    number_paths,
    toml_value,
    toml_with,
)

BIN = str(Path(sys.executable).parent / "vibe-engine")
NUMBER_PATHS = number_paths(VibeConfig)
#: Values that are wrong for every number field of the config.
BAD_NUMBERS: list[Any] = [float("inf"), float("-inf"), float("nan"), True, False, 10**20,
                          1e300, {"a": 1}, [1, 2]]
SECRET = "TOP-SECRET-PROMPT-TEXT"
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def _run_config(root: Path, name: str, text: str | bytes) -> tuple[str, set[str]]:
    """``vibe-engine run`` on a config file holding ``text``: the error line, and what
    the folder holds afterwards besides the config."""
    with fresh_dir(root, "ex") as cwd:
        cfg = cwd / name
        cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
        line = assert_one_line_exit_2(cli(["run", name, "--no-live"], cwd))
        return line, files_under(cwd) - {name}


# -- generated configs -------------------------------------------------------------------------

@PROPERTY
@given(path=st.sampled_from(NUMBER_PATHS), bad=st.sampled_from(BAD_NUMBERS),
       yaml_file=st.booleans())
def test_r1_3_property_bad_numbers_in_config_name_the_field(
    tmp_path: Path, path: tuple[str, str], bad: Any, yaml_file: bool,
) -> None:
    """#19: inf/NaN/booleans/tables/huge numbers where a number is meant, in TOML or
    YAML: one line naming the field, exit 2, nothing written."""
    key, named = path
    if yaml_file:
        data: dict[str, Any] = {"state_dir": "st"}
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = bad
        text, name = yaml.safe_dump(data), "bad.yaml"
    else:
        text, name = toml_with({key: bad}), "bad.toml"
    line, written = _run_config(tmp_path, name, text)
    assert named in line, (key, bad, line)
    assert written == set(), written


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.text(max_size=20))


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.text(max_size=10), st.one_of(inner, st.lists(inner, max_size=3)),
                           max_size=4)


_tables = st.recursive(st.dictionaries(st.text(max_size=10), _scalars, max_size=4), _nest,
                       max_leaves=20)
_sections = st.sampled_from(sorted(VibeConfig.model_fields))


@PROPERTY
@given(section=_sections, value=st.one_of(_scalars, _tables, st.lists(_scalars, max_size=3)))
def test_r1_3_property_malformed_sections_give_one_line(
    tmp_path: Path, section: str, value: Any,
) -> None:
    """#19: any value in any section (random tables, wrong kinds): one line naming the
    section, exit 2, nothing written; configs that happen to be valid are skipped."""
    data = {"state_dir": "st", section: value}
    text = yaml.safe_dump(data)
    try:
        load_config_text(tmp_path, text)
    except ConfigError:
        pass
    else:
        assume(False)
    line, written = _run_config(tmp_path, "bad.yaml", text)
    assert section in line and written == set(), (line, written)


def load_config_text(root: Path, text: str) -> VibeConfig:
    with fresh_dir(root, "probe") as d:
        (d / "c.yaml").write_text(text)
        return load_config(d / "c.yaml")


@PROPERTY
@given(raw=st.binary(max_size=400), suffix=st.sampled_from([".toml", ".yaml"]))
def test_r1_3_property_random_bytes_as_config_give_one_line(
    tmp_path: Path, raw: bytes, suffix: str,
) -> None:
    """#19: a binary or non-UTF-8 file, or any bytes at all: one line, exit 2, nothing
    written (bytes that happen to form a valid config are skipped)."""
    with fresh_dir(tmp_path, "probe") as d:
        (d / f"c{suffix}").write_bytes(raw)
        try:
            load_config(d / f"c{suffix}")
        except ConfigError:
            pass
        else:
            assume(False)
    _line, written = _run_config(tmp_path, f"bad{suffix}", raw)
    assert written == set(), written


_bad_ids = st.one_of(
    st.sampled_from([".", "..", "a" * 129, "a/b", "../x", "", " ", "a\x00b", "ü"]),
    st.text(min_size=1, max_size=20).filter(
        lambda s: not s.isascii() or any(not (c.isalnum() or c in "_.-") for c in s)),
)


@PROPERTY
@given(task_id=_bad_ids)
def test_r1_3_property_bad_task_ids_are_refused(tmp_path: Path, task_id: str) -> None:
    """#19: task ids "." and "..", ids too long for a file name, ids with a path in them:
    one line naming ``tasks.0.id``, exit 2, nothing written; the prompt is never echoed."""
    text = toml_with({}) + (f"[[tasks]]\nid = {toml_value(task_id)}\nagent = \"coder\"\n"
                            f"prompt = \"{SECRET}\"\n")
    line, written = _run_config(tmp_path, "bad.toml", text)
    assert "tasks.0.id" in line and SECRET not in line and written == set(), line


# -- fixed cases --------------------------------------------------------------------------------

def _bomb(levels: int = 12) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"tasks: *a{levels - 1}")
    return "\n".join(lines) + "\n"


CASES: dict[str, tuple[str, str | bytes, str]] = {
    "non-utf8": ("bad.toml", b'state_dir = "st"\nseed = "\xff\xfe"\n', "not UTF-8"),
    "binary": ("bad.toml", b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary"),
    "deep-toml": ("bad.toml", "a = " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
    "deep-yaml": ("bad.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
    "deep-yaml-tables": ("bad.yaml", "".join(f"{' ' * i}k{i}:\n" for i in range(60))
                         + " " * 60 + "x: 1\n", "nested deeper"),
    "alias-bomb": ("bad.yaml", _bomb(), "aliases expand"),
    "recursive-alias": ("bad.yaml", "a: &a [*a]\n", "alias"),
    "not-a-table": ("bad.yaml", "- 1\n- 2\n", "table of settings"),
    "dup-task-secret": ("bad.toml", toml_with({}) + "".join(
        f'[[tasks]]\nid = "t"\nagent = "coder"\nprompt = "{SECRET}"\n' for _ in range(2)),
        "tasks.1.id"),
    "missing-agent-secret": ("bad.toml", toml_with({}) + f'[[tasks]]\nid = "t"\n'
                             f'prompt = "{SECRET}"\n', "tasks.0.agent"),
    # refused before the store is created (the run used to leave vibe.db and its lock)
    "unknown-agent": ("bad.toml", toml_with({}) + '[[tasks]]\nid = "t"\nagent = "nope"\n',
                      "tasks.0.agent='nope': unknown agent"),
    # a wait for a task that never starts (it used to fail the task at run time, exit 1)
    "unknown-dependency": ("bad.toml", toml_with({}) + '[[tasks]]\nid = "t"\nagent = "qa"\n'
                           'depends_on = ["../x"]\n', "tasks.0.depends_on.0='../x'"),
    # entries lay over the default catalog; a new name needs its prices
    "models-incomplete": ("bad.toml", toml_with({"models.custom.model_id": "x"}),
                          "models.custom"),
    "thresholds": ("bad.toml", toml_with({"alerts.warning": 0.95}), "alerts.critical"),
    "renew": ("bad.toml", toml_with({"distributed.renew_s": 30}), "distributed.renew_s"),
    "sim-reversed": ("bad.toml", toml_with({"provider.simulated.output_tokens": [900, 10]}),
                     "provider.simulated.output_tokens"),
    "sim-negative": ("bad.toml", toml_with({"provider.simulated.output_tokens": [-5, 10]}),
                     "provider.simulated.output_tokens"),
    "sim-rate": ("bad.toml", toml_with({"provider.simulated.failure_rate": {"opus": 1.5}}),
                 "provider.simulated.failure_rate.opus"),
    "sim-latency": ("bad.toml", toml_with({"provider.simulated.latency_s": {"opus": -1}}),
                    "provider.simulated.latency_s.opus"),
    "sim-time-scale": ("bad.toml", toml_with({"provider.simulated.time_scale": float("inf")}),
                       "provider.simulated.time_scale"),
    "policy-function": ("bad.toml", toml_with({"policies.victim": "os:getcwd"}),
                        "policies.victim"),
    "policy-module": ("bad.toml", toml_with({"policies.routing": "os:path"}),
                      "policies.routing"),
    "policy-exit": ("bad.toml", toml_with({"policies.alerts": "sys:exit"}), "policies.alerts"),
    "store-function": ("bad.toml", toml_with({"store": "os:getcwd"}), "store"),
    "markup-in-value": ("bad.toml", toml_with({"store": "[/bold]x"}), "[/bold]x"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_r1_3_bad_config_files_one_line_exit_2_nothing_written(tmp_path: Path,
                                                               case: str) -> None:
    """#19: binary, non-UTF-8, deeply nested, alias bombs, whole-config checks (named by
    field, prompts never echoed), simulated-provider settings, import strings naming the
    wrong kind of object: one line, exit 2, nothing written."""
    name, text, expected = CASES[case]
    line, written = _run_config(tmp_path, name, text)
    assert expected in line and SECRET not in line and "<root>" not in line, line
    assert written == set(), written


def test_r1_3_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """#19: a billion-laughs document (9**20 values once expanded) is refused after
    reading its ~200 lines, with little memory."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_bomb(20))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="aliases expand"):
            load_config(cfg)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, peak  # measured: about 70 KiB


def test_r1_3_task_ids_dot_and_dotdot_refused_in_python_too() -> None:
    """#19: ``TaskSpec(id="..")`` would put usage.json and the workspace in the state dir."""
    for bad in (".", "..", "x" * 129):
        with pytest.raises(ValueError, match="id"):
            TaskSpec(id=bad, agent="coder")
    assert TaskSpec(id="x" * 128, agent="coder").id == "x" * 128
    assert TaskSpec(id="...", agent="coder").id == "..."


# -- command-line options -------------------------------------------------------------------

_NUMBER_JUNK = ["nan", "inf", "-inf", "1e400", "abc", "", "-1", "--", "[/]"]
#: (command and arguments, option, values that are all wrong for it)
OPTIONS: list[tuple[list[str], str, list[str]]] = [
    (["demo"], "--tasks", [*_NUMBER_JUNK, "10001", "1.5"]),
    (["demo"], "--time-scale", _NUMBER_JUNK),
    (["demo"], "--decision-timeout", [*_NUMBER_JUNK, "0"]),
    (["decide", "t", "add"], "--tokens", [*_NUMBER_JUNK, "0", "1.5"]),
    (["decide", "t", "add"], "--cost", [*_NUMBER_JUNK, "0"]),
    (["decide", "t", "add"], "--time-s", [*_NUMBER_JUNK, "0"]),
    (["decide", "t", "add"], "--file-edits", [*_NUMBER_JUNK, "0"]),
    (["decide", "t", "add"], "--shell-commands", [*_NUMBER_JUNK, "0"]),
    (["fake-api"], "--port", [*_NUMBER_JUNK, "65536", "99999"]),
    (["fake-api"], "--input-ratio", [*_NUMBER_JUNK, "0"]),
    (["fake-api"], "--output-tokens", _NUMBER_JUNK),
    (["report"], "--html", ["missing/r.html", "missing/deeper/r.html", "."]),
]
_option_values = st.sampled_from(OPTIONS).flatmap(
    lambda o: st.tuples(st.just(o[0]), st.just(o[1]), st.sampled_from(o[2])))
_levels = st.text(max_size=12).filter(
    lambda s: s.lower() not in ("debug", "info", "warning", "error", "critical"))


@PROPERTY
@given(case=_option_values)
def test_r7_2_property_bad_option_values_one_line_naming_the_option(
    tmp_path: Path, case: tuple[list[str], str, str],
) -> None:
    """#19: NaN, infinite, negative, out-of-range or unparsable option values (and a
    report into a missing folder): one line naming the option, exit 2, nothing written."""
    args, option, value = case
    with fresh_dir(tmp_path, "cwd") as cwd:
        result = cli([*args, f"{option}={value}"], cwd)
        assert_one_line_exit_2(result, option)
        assert files_under(cwd) == set()


@PROPERTY
@given(command=st.sampled_from([["demo"], ["run", "c.toml"]]), level=_levels)
def test_r7_2_property_bad_log_level_one_line(tmp_path: Path, command: list[str],
                                              level: str) -> None:
    with fresh_dir(tmp_path, "cwd") as cwd:
        result = cli([*command, f"--log-level={level}"], cwd)
        assert_one_line_exit_2(result, "--log-level")
        assert files_under(cwd) == set()


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["report"],
                                     ["decide", "t", "finish"], ["decide", "t", "review"]])
def test_r7_2_read_only_commands_on_a_missing_state_dir_create_nothing(
    tmp_path: Path, command: list[str],
) -> None:
    """#19: ``status``, ``report`` and ``decide`` on a state dir that does not exist (a
    typo) say so and exit non-zero; no directory or database is created."""
    result = cli([*command, "--state-dir", "no/such/dir"], tmp_path)
    assert_one_line_exit_2(result, "no/such/dir", "does not exist")
    (tmp_path / "empty").mkdir()  # exists, but nothing ever ran there: no vibe.db
    result = cli([*command, "--state-dir", "empty"], tmp_path)
    assert_one_line_exit_2(result, "vibe.db")
    assert files_under(tmp_path) == {"empty"}


def test_r7_2_busy_ports_one_line(tmp_path: Path) -> None:
    """#19: ``fake-api --port`` and ``metrics.port`` on a port in use: one line, exit 2,
    nothing written."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli(["fake-api", "--port", str(port)], tmp_path)
        assert_one_line_exit_2(result, "--port", "in use")
        cfg = toml_with({"metrics.enabled": True, "metrics.port": port})
        line, written = _run_config(tmp_path, "busy.toml", cfg)
    assert "metrics.port" in line and "in use" in line and written == set(), line


def test_r7_2_bad_input_through_the_real_binary(tmp_path: Path) -> None:
    """#19: the installed ``vibe-engine`` (no terminal, narrow default width) keeps every
    error on one line, with no traceback and nothing written."""
    (tmp_path / "bad.yaml").write_text(_bomb())
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    for argv in (["run", "bad.yaml"], ["demo", "--time-scale", "nan"],
                 ["status", "--state-dir", "typo"], ["decide", "t", "add", "--cost", "inf"]):
        out = subprocess.run([BIN, *argv], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env=env)
        assert out.returncode == 2, (argv, out)
        assert len(out.stderr.strip().splitlines()) == 1, (argv, out.stderr)
        assert "Traceback" not in out.stderr
    assert files_under(tmp_path) == {"bad.yaml"}


def test_r7_2_status_of_a_memory_store_run_reads_status_json_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """#19: a run on a memory store leaves ``status.json`` but no ``vibe.db``: ``status``
    shows it and creates no database."""
    orch = build_orchestrator({}, state_dir=tmp_path / "st")
    run_virtual(orch.run, [])
    before = files_under(tmp_path)
    assert "st/status.json" in before and "st/vibe.db" not in before
    result = cli(["status", "--state-dir", "st", "--json"], tmp_path)
    assert result.code == 0, result
    assert '"source"' in result.stdout
    assert files_under(tmp_path) == before
