"""State files readable by their owner only, whatever the umask.

The store, ``status.json``, ``usage.json`` and the Redis spool hold what agents
spent, their prompts' task ids and, in the store, checkpoints and decisions: on
a shared machine another user must not read them.  Files are created ``0600``
and folders ``0700`` explicitly (a umask can only take bits away, and an older
file keeps its mode, so an existing one is narrowed too).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import IO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> Path:
    """``mkdir -p path``; the folders it creates are ``0700`` (existing ones are kept)."""
    # mkdir first, look later: a task's end creates thousands of folders, and each
    # system call here is one more wait for the GIL in the worker thread that writes them
    try:
        os.mkdir(path, PRIVATE_DIR)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return path
    except FileNotFoundError:
        if path.parent == path:
            raise
        private_dir(path.parent)
        try:
            os.mkdir(path, PRIVATE_DIR)
        except FileExistsError:  # made meanwhile by another writer
            if not os.path.isdir(path):
                raise
            return path
    os.chmod(path, PRIVATE_DIR)  # the umask may have taken bits away
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` if missing and make it ``0600``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return path


def open_private(path: Path, *, append: bool = False) -> IO[str]:
    """Open ``path`` for writing text (truncate, or ``append``), ``0600``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "a" if append else "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, text: str) -> Path:
    """Replace ``path`` atomically with ``text``, ``0600`` (a reader never sees half)."""
    # one temporary name per thread: two writers of one file (worker threads) never share it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = text.encode("utf-8")
    # a bare descriptor, not a text file object: that one adds an fstat, an lseek and an
    # isatty per file, for a single write
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def remove_file(path: Path) -> None:
    """Remove ``path`` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
