"""State files readable by their owner only, whatever the umask.

The store, ``status.json``, ``usage.json`` and the Redis spool hold what agents
spent, their prompts' task ids and, in the store, checkpoints and decisions: on
a shared machine another user must not read them.  Files are created ``0600``
and folders ``0700`` explicitly (a umask can only take bits away, and an older
file keeps its mode, so an existing one is narrowed too).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from pathlib import Path
from typing import IO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def umask_keeps_owner() -> bool:
    """Whether the process's umask leaves the owner's bits alone, so that a file created
    ``0600`` (a folder ``0700``) gets exactly that mode and needs no ``chmod``.  Read from
    ``/proc/self/status`` (``os.umask`` can only be read by setting it, which would race
    with other threads creating files); ``False`` where it cannot be read."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8) & PRIVATE_DIR == 0
    except (OSError, ValueError, IndexError):
        pass
    return False


def private_dir(path: Path, *, fix_mode: bool = True) -> Path:
    """``mkdir -p path``; the folders it creates are ``0700`` (existing ones are kept).
    ``fix_mode=False``: the caller knows the umask keeps the owner's bits
    (:func:`umask_keeps_owner`), so the mode given to ``mkdir`` is the folder's."""
    make_private_dir(path, fix_mode=fix_mode)
    return path


def make_private_dir(path: Path, *, fix_mode: bool = True) -> bool:
    """:func:`private_dir`; True when ``path`` itself was created (it holds nothing yet)."""
    # mkdir first, look later: a task's end creates thousands of folders, and each
    # system call here is one more wait for the GIL in the worker thread that writes them
    try:
        os.mkdir(path, PRIVATE_DIR)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_private_dir(path.parent, fix_mode=fix_mode)
        try:
            os.mkdir(path, PRIVATE_DIR)
        except FileExistsError:  # made meanwhile by another writer
            if not os.path.isdir(path):
                raise
            return False
    if fix_mode:
        os.chmod(path, PRIVATE_DIR)  # the umask may have taken bits away
    return True


def private_file(path: Path) -> Path:
    """Create ``path`` if missing and make it ``0600``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    try:
        _fix_mode(fd)
    finally:
        os.close(fd)
    return path


def _fix_mode(fd: int) -> None:
    """``0600`` for a regular file only: a device or FIFO a user named as an output
    (``/dev/null``, ``/dev/stdout``) is shared by the whole machine; running as root, a
    chmod of ``/dev/null`` broke every other user's writes to it."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fchmod(fd, PRIVATE_FILE)


def private_mode(path: Path) -> Path:
    """:func:`private_file`, but an existing file is made ``0600`` without opening it:
    closing any descriptor of a file drops every POSIX lock this process holds on it --
    SQLite's on a database it has open among them, so another process would take the
    database for closed and rebuild its WAL index under the open connection."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return private_file(path)
    if stat.S_ISREG(mode):  # never a device's mode (see _fix_mode)
        os.chmod(path, PRIVATE_FILE)
    return path


def open_private(path: Path, *, append: bool = False) -> IO[str]:
    """Open ``path`` for writing text (truncate, or ``append``), ``0600``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        _fix_mode(fd)
        return os.fdopen(fd, "a" if append else "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, text: str, *, fix_mode: bool = True) -> Path:
    """Replace ``path`` atomically with ``text``, ``0600`` (a reader never sees half).
    ``fix_mode=False``: as for :func:`private_dir`, no ``fchmod``.  A FIFO or device at
    ``path`` (or a link to one) is written into, never replaced: the rename would put a
    regular file in place of someone's pipe, or, as root, of ``/dev/stdout``."""
    data = text.encode("utf-8")
    if _special(path):
        _write_into(path, data)
        return path
    # one temporary name per thread: two writers of one file (worker threads) never share it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # a bare descriptor, not a text file object: that one adds an fstat, an lseek and an
    # isatty per file, for a single write.  O_EXCL: a file made now has the mode asked
    # for (less the umask), never the mode of a temporary file a killed process left
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, PRIVATE_FILE)
    except FileExistsError:
        remove_file(tmp)
        fd = os.open(tmp, flags, PRIVATE_FILE)
    try:
        if fix_mode:
            os.fchmod(fd, PRIVATE_FILE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _special(path: Path) -> bool:
    """Whether ``path`` (followed) is a FIFO, device or socket, not a file to replace."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _write_into(path: Path, data: bytes) -> None:
    """Write ``data`` into the FIFO or device at ``path``; its mode is kept.  Opened without
    waiting: a FIFO no one reads raises (ENXIO) instead of stopping the writer."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OSError(exc.errno, "a FIFO no process reads", str(path)) from None
        raise
    try:
        os.set_blocking(fd, True)  # a reader slower than the write: wait for it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    """Remove ``path`` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
