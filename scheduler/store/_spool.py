"""A durable local spool for usage events that could not reach a remote store.

One JSON line per event, appended and ``fsync``-ed before ``record`` returns,
so an event recorded while Redis is unreachable survives even a SIGKILL of the
process.  Replaying is safe because events are idempotent on ``event_id``: a
line that reached Redis before a crash is simply not charged twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._errors import StoreError
from .._usage import UsageEvent


class Spool:
    """Append-only JSON-lines file of pending events (each with an optional hold id)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            self._count = len(self.read())
        return self._count

    def append(self, event: UsageEvent, hold_id: str = "") -> None:
        line = json.dumps({"event": event.to_dict(), "hold": hold_id}, sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StoreError(f"cannot spool event {event.event_id} to {self.path}: {exc}") from exc
        self._count = len(self) + 1

    def read(self) -> list[tuple[UsageEvent, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out: list[tuple[UsageEvent, str]] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-write: never acknowledged
            out.append((UsageEvent.from_dict(d["event"]), str(d.get("hold", ""))))
        return out

    def drop_first(self, n: int) -> None:
        """Forget the first ``n`` entries (they reached the store); atomic rewrite."""
        rest = self.read()[n:]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for event, hold in rest:
                f.write(json.dumps({"event": event.to_dict(), "hold": hold}, sort_keys=True))
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._count = len(rest)
