"""A durable local spool for writes that could not reach a remote store.

One JSON line per write — a usage event (with the hold it settles, if any) or a
state record write/delete — appended and ``fsync``-ed before the call returns,
so a write made while Redis is unreachable survives even a SIGKILL of the
process.  Replaying is safe: events are idempotent on ``event_id``, and state
writes are replayed in their original order (last write wins).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from scheduler.core import StoreError, UsageEvent, get_logger, open_private, private_dir
from scheduler.store._base import OPEN_CALL

_log = get_logger("vibe_engine.store.spool")


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    event: UsageEvent
    hold_id: str = ""
    #: The scopes of that hold, whose totals (every process's) the commit answers with
    #: (``store.Settled``); not spooled: a replayed settle answers no one.
    fleet: tuple[str, ...] = field(default=(), compare=False)


# not frozen, though never changed once made: a frozen dataclass sets each field through
# ``object.__setattr__``, three times the cost, and every model call makes two of these
@dataclass(slots=True)
class SpooledState:
    kind: str
    key: str
    value: dict[str, Any] | None  # None: delete
    #: ``value`` as the store writes it (sorted JSON), when the writer encoded it already.
    text: str = field(default="", compare=False)
    #: Its ``open_calls`` row (SQLite, an open call's record), when the writer made it.
    row: list[Any] | None = field(default=None, compare=False)


Entry = SpooledEvent | SpooledState


def _encode(entry: Entry) -> str:
    if isinstance(entry, SpooledEvent):
        doc: dict[str, Any] = {"event": entry.event.to_dict(), "hold": entry.hold_id}
    else:
        doc = {"state": [entry.kind, entry.key, entry.value]}
    return json.dumps(doc, sort_keys=True)


def _decode(line: str) -> Entry | None:
    try:
        d = json.loads(line)
    except json.JSONDecodeError:
        return None  # a torn last line from a crash mid-write: never acknowledged
    if "state" in d:
        kind, key, value = d["state"]
        return SpooledState(str(kind), str(key), value)
    return SpooledEvent(UsageEvent.from_dict(d["event"]), str(d.get("hold", "")))


class Spool:
    """Append-only JSON-lines file of pending writes, replayed in order.

    Several processes may share one (every process on a SQLite file spools beside it):
    an append and the rewrite that drops replayed entries hold the file's ``flock`` in
    turn, so no append lands in a file being replaced; one process replays at a time
    (:meth:`replaying`); and the entry count is read again once the file changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._count: int | None = None
        #: The file (inode, size) the count is of: another process's change shows.
        self._seen: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        """The entries pending, as of this process's last look (see :meth:`pending`)."""
        if self._count is None:
            self._count = len(self.read())
        return self._count

    def warn_left(self, event: str, **where: str) -> None:
        """One warning line when writes are left in the spool as the store closes (its
        backend still unreachable): how many, and that the next start applies them."""
        if left := len(self):
            _log.warning(event, pending=left, path=str(self.path), **where,
                         message=f"{left} writes wait in the spool; they are applied at "
                                 "the next start or `vibe-engine resume`")

    def pending(self) -> int:
        """The entries pending now, another process's appends and replays included."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._count, self._seen = 0, (0, 0)
            return 0
        if self._count is None or (st.st_ino, st.st_size) != self._seen:
            self.read()
        return len(self)

    def append(self, entry: Entry) -> None:
        self.extend([entry])

    def extend(self, entries: list[Entry]) -> None:
        """Append ``entries`` in order, fsync-ed once for all of them before returning."""
        try:
            private_dir(self.path.parent)
            with self._locked(append=True) as f:
                before = os.fstat(f.fileno())
                f.write("".join(_encode(e) + "\n" for e in entries))
                f.flush()
                os.fsync(f.fileno())
                after = os.fstat(f.fileno())
        except OSError as exc:
            raise StoreError(f"cannot spool a write to {self.path}: {exc}") from exc
        if self._count is not None and (before.st_ino, before.st_size) == self._seen:
            self._count += len(entries)
            self._seen = (after.st_ino, after.st_size)
        else:  # the file changed since this process last looked: counted when asked
            self._count = None

    def read(self) -> list[Entry]:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
                st = os.fstat(f.fileno())
        except FileNotFoundError:
            self._count, self._seen = 0, (0, 0)
            return []
        entries = (_decode(line) for line in text.splitlines() if line.strip())
        out = [e for e in entries if e is not None]
        self._count, self._seen = len(out), (st.st_ino, st.st_size)
        return out

    def drop_first(self, n: int) -> None:
        """Forget the first ``n`` entries (they reached the store); atomic rewrite, the
        file locked from its re-read to its replace (another process's append waits)."""
        with self._locked(append=True):
            rest = self.read()[n:]
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            with open_private(tmp) as f:
                f.writelines(_encode(e) + "\n" for e in rest)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        self.read()

    def drop_replayed(self, n: int) -> bool:
        """:meth:`drop_first` after a replay; the entries are kept when the spool cannot be
        rewritten (a full disk): replayed again later, idempotently, rather than failing
        the write whose call replayed them.  Whether they were dropped."""
        try:
            self.drop_first(n)
        except OSError as exc:
            _log.warning("spool_not_dropped", path=str(self.path), writes=n, error=str(exc))
            return False
        return True

    @contextmanager
    def replaying(self) -> Iterator[bool]:
        """Whether this process may replay the spool now: ``False`` while another does
        (two replays would each drop the entries they read: the second, writes spooled
        meanwhile).  The lock file beside the spool is the Redis store's too."""
        try:
            fd = os.open(self.path.with_name(self.path.name + ".lock"),
                         os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            yield True  # no lock to take where the spool lives: replay as before
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing drops the flock

    @contextmanager
    def _locked(self, *, append: bool) -> Iterator[IO[str]]:
        """The spool file open for appending, under its ``flock``: the file at the path
        once locked (a replace while waiting leaves the old one, its entries copied)."""
        while True:
            f = open_private(self.path, append=append)
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield f
                    return
            finally:
                f.close()  # closing drops the flock


def closed_with(event: UsageEvent, after: Sequence[SpooledEvent | SpooledState]) -> str | None:
    """The open call a spooled event closes: the delete of its record spooled right after."""
    nxt = after[0] if after else None
    if (isinstance(nxt, SpooledState) and nxt.kind == OPEN_CALL and nxt.value is None
            and nxt.key == event.event_id):
        return nxt.key
    return None


def with_spooled_events(recorded: list[UsageEvent],
                        spooled: Sequence[SpooledEvent | SpooledState], task_id: str | None,
                        day_from: str | None, day_to: str | None) -> list[UsageEvent]:
    """``recorded`` (Redis's events, in order) with the matching events still in the spool
    as their replay leaves the log: one not recorded yet added (a replay half done has it
    in both), and the estimate charged for a call whose spooled event closes it taken out
    (that event replaces it, see ``store.record_and_delete_state``)."""
    if not spooled:
        return recorded
    ids = {e.event_id for e in recorded}
    added, replaced = [], set()
    for i, entry in enumerate(spooled):
        if not isinstance(entry, SpooledEvent) or entry.event.event_id in ids:
            continue
        e = entry.event
        if closed_with(e, spooled[i + 1:i + 2]) is not None:
            replaced.add(f"{e.event_id}:estimate")
        if (task_id is None or e.task_id == task_id) and (
                day_from is None or e.day >= day_from) and (day_to is None or e.day <= day_to):
            ids.add(e.event_id)
            added.append(e)
    if not added:
        return recorded
    out = [e for e in recorded if e.event_id not in replaced] + added
    return sorted(out, key=lambda e: e.at)  # stable: Redis's order among equal times
