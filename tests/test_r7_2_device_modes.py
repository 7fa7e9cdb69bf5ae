"""R7.2: an output path a user names may be a device or a FIFO (``/dev/null``,
``/dev/stdout``): the runtime writes to it but never changes its mode.  Running as root,
``report --html /dev/null`` used to make ``/dev/null`` ``0600`` for the whole machine.
A FIFO in the test's directory stands in for the device."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from scheduler.core._files import open_private, private_file, private_mode


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
