"""R7.2: an output path a user names may be a device or a FIFO (``/dev/null``,
``/dev/stdout``): the runtime writes to it but never changes its mode.  Running as root,
``report --html /dev/null`` used to make ``/dev/null`` ``0600`` for the whole machine.
A FIFO in the test's directory stands in for the device."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scheduler.core._files import open_private, private_file, private_mode, write_private
from tests._cli_helpers import cli


def test_r7_2_a_fifo_named_as_an_output_keeps_its_mode(tmp_path: Path) -> None:
    fifo = tmp_path / "out"
    os.mkfifo(fifo, 0o644)
    os.chmod(fifo, 0o644)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a writer's open then returns
    try:
        with open_private(fifo) as out:
            out.write("x")
        private_file(fifo)
        private_mode(fifo)
        assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o644
        assert os.read(reader, 10) == b"x"
    finally:
        os.close(reader)


def test_r7_2_a_regular_output_file_is_still_made_private(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text("")
    os.chmod(path, 0o644)
    with open_private(path) as out:
        out.write("<html>")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_r7_2_a_fifo_among_the_task_files_is_written_into_never_replaced(
    tmp_path: Path,
) -> None:
    """A FIFO (or a link to one) where a run writes a task's ``usage.json`` or
    ``result.json`` -- someone piping it to a monitor -- is written into and stays a
    FIFO: the atomic rename replaced it with a regular file (as root, a device named
    so, ``/dev/stdout``, would have lost its node)."""
    folder = tmp_path / "st" / "tasks" / "q"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "usage.json")
    os.mkfifo(tmp_path / "results")
    (folder / "result.json").symlink_to(tmp_path / "results")
    readers = [os.open(p, os.O_RDONLY | os.O_NONBLOCK)
               for p in (folder / "usage.json", tmp_path / "results")]
    (tmp_path / "c.toml").write_text(
        'state_dir = "st"\n[provider]\nkind = "simulated"\n[provider.simulated]\n'
        'time_scale = 0.0\nfailure_rate = { haiku = 0.0, sonnet = 0.0, opus = 0.0 }\n'
        '[[tasks]]\nid = "q"\nagent = "qa"\nprompt = "Where is the config loaded?"\n')
    try:
        result = cli(["run", "c.toml", "--no-live", "--log-level", "warning"], tmp_path)
        usage, results = (os.read(fd, 1 << 16) for fd in readers)
    finally:
        for fd in readers:
            os.close(fd)
    assert result.code == 0, result
    assert stat.S_ISFIFO(os.stat(folder / "usage.json").st_mode)
    assert (folder / "result.json").is_symlink()
    assert stat.S_ISFIFO(os.stat(tmp_path / "results").st_mode)
    assert b'"tokens"' in usage and b"{" in results


def test_r7_2_a_fifo_no_one_reads_is_refused_in_one_line_and_kept(tmp_path: Path) -> None:
    """Without a reader the write is refused at once (it never waits for one), naming
    the file; the FIFO stays."""
    fifo = tmp_path / "usage.json"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="a FIFO no process reads"):
        write_private(fifo, "{}")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usage.json"]
