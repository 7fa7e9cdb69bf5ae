"""A durable local spool for writes that could not reach a remote store.

One JSON line per write — a usage event (with the hold it settles, if any) or a
state record write/delete — appended and ``fsync``-ed before the call returns,
so a write made while Redis is unreachable survives even a SIGKILL of the
process.  Replaying is safe: events are idempotent on ``event_id``, and state
writes are replayed in their original order (last write wins).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.core import StoreError, UsageEvent, open_private, private_dir


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    event: UsageEvent
    hold_id: str = ""


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
    """Append-only JSON-lines file of pending writes, replayed in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            self._count = len(self.read())
        return self._count

    def append(self, entry: Entry) -> None:
        self.extend([entry])

    def extend(self, entries: list[Entry]) -> None:
        """Append ``entries`` in order, fsync-ed once for all of them before returning."""
        try:
            private_dir(self.path.parent)
            with open_private(self.path, append=True) as f:
                f.write("".join(_encode(e) + "\n" for e in entries))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StoreError(f"cannot spool a write to {self.path}: {exc}") from exc
        self._count = len(self) + len(entries)

    def read(self) -> list[Entry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        entries = (_decode(line) for line in text.splitlines() if line.strip())
        return [e for e in entries if e is not None]

    def drop_first(self, n: int) -> None:
        """Forget the first ``n`` entries (they reached the store); atomic rewrite."""
        rest = self.read()[n:]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open_private(tmp) as f:
            f.writelines(_encode(e) + "\n" for e in rest)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._count = len(rest)
