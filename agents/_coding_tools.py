"""The coding tools of the built-in ``coder``: list, read, edit, write, run — all governed.

Each tool works inside one directory (a repository checkout or the task's
workspace) through the context's governed operations: an edit or a write is
one counted file edit under the file's lock and a critical section
(``FileOps.write``); a command is a counted shell command, a dangerous one
counted apart (``ShellOps.run``).  Paths outside the directory are refused.
What changed and what ran is noted in the tool loop's checkpointed ``notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scheduler.core import off_loop
from scheduler.runtime import AgentContext, FileOps, PathEscapeError, ShellOps, Tool, ToolError

#: Directories never listed: tooling and caches, not the project's files.
SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".vibe-engine",
                       ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox"})
MAX_LISTED = 500
MAX_OUTPUT_CHARS = 20_000

Notes = Callable[[], dict[str, Any]]


def _schema(required: list[str], **props: str) -> dict[str, Any]:
    return {"type": "object", "required": required,
            "properties": {k: {"type": v} for k, v in props.items()}}


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n… [{len(text) - MAX_OUTPUT_CHARS} more characters]"


class CodingTools:
    """The five tools over ``root``; ``notes`` is where changes and commands are noted."""

    def __init__(self, ctx: AgentContext, root: Path, notes: Notes) -> None:
        self.root = root.resolve()
        self.files = FileOps(ctx, self.root)
        self.shell = ShellOps(ctx, self.root)
        self._notes = notes

    def tools(self) -> list[Tool]:
        return [
            Tool("list_files", "List the files under a directory of the repository "
                 "(relative paths; tooling and cache directories skipped).",
                 _schema([], path="string"), self.list_files),
            Tool("read_file", "Read a text file of the repository.",
                 _schema(["path"], path="string"), self.read_file),
            Tool("edit_file", "Replace the one exact occurrence of old_string in a file with "
                 "new_string (old_string must occur exactly once).",
                 _schema(["path", "old_string", "new_string"], path="string",
                         old_string="string", new_string="string"), self.edit_file),
            Tool("write_file", "Create or overwrite a file with the given content.",
                 _schema(["path", "content"], path="string", content="string"),
                 self.write_file),
            Tool("run_command", "Run a shell command in the repository; returns its exit "
                 "code and output.", _schema(["command"], command="string",
                                              timeout_s="number"), self.run_command),
        ]

    def _path(self, raw: Any) -> Path:
        full = (self.root / str(raw or ".")).resolve()
        if not full.is_relative_to(self.root):
            raise ToolError(f"{raw} is outside the repository")
        return full

    def _changed(self, path: Path) -> None:
        rel = str(path.relative_to(self.root))
        changed: list[str] = self._notes().setdefault("files_changed", [])
        if rel not in changed:
            changed.append(rel)

    async def list_files(self, args: Mapping[str, Any]) -> str:
        base = self._path(args.get("path"))

        def walk() -> list[str]:
            out: list[str] = []
            for p in sorted(base.rglob("*")):
                if any(part in SKIP_DIRS for part in p.relative_to(self.root).parts):
                    continue
                if p.is_file():
                    out.append(str(p.relative_to(self.root)))
                if len(out) >= MAX_LISTED:
                    break
            return out

        if not base.is_dir():
            raise ToolError(f"{args.get('path')} is not a directory")
        return "\n".join(await off_loop(walk)) or "(no files)"

    async def read_file(self, args: Mapping[str, Any]) -> str:
        return _clip(await self.files.read(self._path(args.get("path"))))

    async def edit_file(self, args: Mapping[str, Any]) -> str:
        path = self._path(args.get("path"))
        old, new = str(args.get("old_string", "")), str(args.get("new_string", ""))
        text = await self.files.read(path)
        count = text.count(old) if old else 0
        if count != 1:
            raise ToolError(f"old_string occurs {count} times in {args.get('path')}; "
                            "it must occur exactly once")
        await self._write(path, text.replace(old, new, 1))
        return f"edited {path.relative_to(self.root)}"

    async def write_file(self, args: Mapping[str, Any]) -> str:
        path = self._path(args.get("path"))
        await self._write(path, str(args.get("content", "")))
        return f"wrote {path.relative_to(self.root)}"

    async def _write(self, path: Path, content: str) -> None:
        try:
            await self.files.write(path, content)
        except PathEscapeError as exc:
            raise ToolError(str(exc)) from None
        self._changed(path)

    async def run_command(self, args: Mapping[str, Any]) -> str:
        command = str(args.get("command", "")).strip()
        if not command:
            raise ToolError("no command given")
        got = await self.shell.run(command, timeout_s=float(args.get("timeout_s") or 300))
        self._notes().setdefault("commands", []).append(
            {"command": command, "returncode": got.returncode})
        return _clip(f"exit code {got.returncode}\n--- stdout\n{got.stdout}"
                     f"--- stderr\n{got.stderr}")
