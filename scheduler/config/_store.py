"""The SQLite form of the ``store`` setting: ``sqlite:///`` and an absolute path.

As in a ``file:`` URL, the path is everything after ``sqlite://``, so
``sqlite:///var/lib/vibe/shared.db`` is ``/var/lib/vibe/shared.db`` and
``sqlite:////var/lib/vibe/shared.db`` (SQLAlchemy's absolute form) the same file.
SQLAlchemy reads three slashes as a *relative* path; the one reading it and this one
disagree only about which file is meant, so the forms where that is a real doubt are
refused instead of guessed: a file right at the filesystem root (``sqlite:///vibe.db``,
most likely meant as ``./vibe.db``) and any other ``sqlite:`` spelling.  A file in the
state directory is ``store = "sqlite"``.
"""

from __future__ import annotations

from pathlib import Path

from scheduler.core import ConfigError

SQLITE_URL = "sqlite:///"
_FORMS = ('write sqlite:///ABSOLUTE/PATH.db (for example sqlite:///var/lib/vibe/shared.db), '
          'or "sqlite" for STATE_DIR/vibe.db')


def sqlite_file(store: str) -> Path | None:
    """The database file a ``sqlite:///…`` store names (``None`` for any other store,
    ``"sqlite"`` included); raises :class:`ConfigError` naming ``store`` for a
    malformed or ambiguous SQLite URL."""
    if not store.startswith("sqlite:") or store == "sqlite":
        return None
    if not store.startswith(SQLITE_URL):
        raise ConfigError("store", store, f"not a SQLite store URL; {_FORMS}")
    rest = store.removeprefix(SQLITE_URL).lstrip("/")
    if not rest or rest.endswith("/"):
        raise ConfigError("store", store, f"names no database file; {_FORMS}")
    if any(ord(c) < 32 or ord(c) == 127 for c in rest):
        raise ConfigError("store", store, "the path holds a control character")
    path = Path("/" + rest)
    if path.parent == Path("/"):
        raise ConfigError("store", store, (
            f"ambiguous: the path after sqlite:// is absolute, so this is {path} at the "
            f"filesystem root, not ./{rest}; {_FORMS}"))
    return path
