"""WAL checkpoints of the SQLite store, in a thread of their own.

The store's connection commits on the event loop and never checkpoints
(``wal_autocheckpoint=0``): with WAL and ``synchronous=NORMAL`` its commit is
then a ``write()`` into the WAL and nothing more.  The fsyncs a checkpoint needs
(the WAL before its pages are copied back, the database file after) happen here,
on a connection of this thread's own, while the loop goes on committing.

The store asks for a checkpoint every ``every`` commits.  A PASSIVE checkpoint
takes no lock a writer needs and never waits for one, so the loop goes on
committing while it copies — and the WAL, which starts over from its beginning
only once every frame in it is copied, would grow without end under a steady
stream of commits.  So once it holds more than ``restart_frames`` frames, a
RESTART checkpoint follows the PASSIVE one: it copies the few frames committed
meanwhile while holding the write lock (the loop's commits answer "busy" for
those milliseconds and are retried, the loop itself never waits).  After a
checkpoint that copied every frame, this thread makes the first write of the
next WAL cycle (``PRAGMA user_version``, a value nothing reads): that write
starts the WAL again from its beginning and fsyncs its new header — here, not
in the loop's next commit.  (When the loop committed in between, the write only
adds a frame, and that cycle's first commit pays the header's fsync.)
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from scheduler.core import get_logger

_log = get_logger("vibe_engine.store.sqlite")
#: Commits between two checkpoints: a few pages each, so the WAL stays around a
#: thousand pages, SQLite's own automatic checkpoint size.
CHECKPOINT_EVERY = 256
#: WAL frames (pages) above which the WAL is started over: 8 MiB of 2 KiB pages.
RESTART_FRAMES = 4096
_WAIT_MS = 500  # how long a RESTART checkpoint waits for the lock, in this thread


class Checkpointer:
    """Runs PASSIVE checkpoints of ``path``'s WAL in a daemon thread, on request."""

    def __init__(self, path: Path, *, every: int = CHECKPOINT_EVERY,
                 restart_frames: int = RESTART_FRAMES) -> None:
        self.path = path
        self.every = every
        self.restart_frames = restart_frames
        self._commits = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Checkpoints run so far, and the threads they ran in (never the loop's).
        self.runs = 0
        self.thread_ids: set[int] = set()

    def committed(self) -> None:
        """Count one commit of the store; each ``every``-th wakes the thread."""
        self._commits += 1
        if self._commits >= self.every:
            self._commits = 0
            self.request()

    def request(self) -> None:
        """Ask for a checkpoint soon (the thread starts at the first request)."""
        if self._stopping:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"vibe-checkpoint-{self.path.name}")
            self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """End the thread after the checkpoint under way (blocking: call it off the loop)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stopping = False  # a store opened again checkpoints again

    def _loop(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            _log.warning("sqlite_checkpoint_unavailable", path=str(self.path), error=str(exc))
            return
        try:
            db.execute(f"PRAGMA busy_timeout={_WAIT_MS}")
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                self._checkpoint(db)
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and frames >= self.restart_frames:
                busy, frames, copied = db.execute(
                    "PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy and frames > 0 and copied == frames:
                _restart_wal(db)
        except sqlite3.Error as exc:  # locked or failing: the next request tries again
            _log.debug("sqlite_checkpoint_skipped", path=str(self.path), error=str(exc))
            return
        self.runs += 1
        self.thread_ids.add(threading.get_ident())


def _restart_wal(db: sqlite3.Connection) -> None:
    """Make the first write of the next WAL cycle here (see the module docstring)."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return  # the store got the lock first: its commit starts the new cycle
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute(f"PRAGMA user_version={int(version)}")
        db.execute("COMMIT")
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
