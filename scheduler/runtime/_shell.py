"""What an agent's shell command may see, and whether it has side effects (R1.1).

Two guards for ``ctx.shell.run`` (docs/security.md says what they cover and
what needs an OS sandbox):

* :func:`scrubbed_env` — the environment a command runs with: this process's,
  minus the provider's API key, every variable whose name looks like a secret
  or is configured as one (``shell.secret_env``), and every variable whose value
  carries the API key under another name.
* :func:`dangerous_reason` — why a command counts as *dangerous* (a write, a
  command that runs other commands, a read outside the task's workspace) or
  ``""`` for a read-only one.  It is an allowlist: only the read-only programs
  below, with none of their writing options, are safe; anything it cannot parse
  is dangerous.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path

#: Variable names that are secrets whatever the configuration (matched case-insensitively).
SECRET_ENV_PATTERNS = (
    "*API_KEY*", "*APIKEY*", "*SECRET*", "*TOKEN*", "*PASSWORD*", "*PASSWD*",
    "*CREDENTIAL*", "*PRIVATE_KEY*", "*ACCESS_KEY*", "*AUTH*",
)
#: Programs that only read (with the option checks below); anything else is dangerous.
SAFE_COMMANDS = frozenset(
    {
        "cat", "echo", "ls", "pwd", "head", "tail", "wc", "grep", "rg", "find", "stat",
        "true", "false", "date", "whoami", "which", "diff", "sort", "uniq", "tree", "du",
        "df", "file", "basename", "dirname", "realpath", "test",
    }
)
SAFE_GIT = frozenset({"status", "diff", "log", "show", "branch", "rev-parse", "ls-files", "blame"})
#: ``git`` options allowed before the subcommand (``-c``, ``-C``, ``--git-dir`` … are not).
_GIT_GLOBAL_OK = frozenset({"--no-pager", "--no-optional-locks", "-P"})
#: ``git branch`` options that only list (anything else creates, deletes, moves, copies).
_GIT_BRANCH_LIST = frozenset({
    "-a", "--all", "-r", "--remotes", "-v", "-vv", "--verbose", "-l", "--list",
    "--show-current", "--contains", "--no-contains", "--merged", "--no-merged",
    "--points-at", "--sort", "--format", "--column", "--no-column", "--color",
    "--no-color", "-i", "--ignore-case", "--abbrev", "--no-abbrev", "-q", "--quiet",
})
_FIND_WRITES = frozenset({"-delete", "-exec", "-execdir", "-ok", "-okdir", "-fprint",
                          "-fprint0", "-fprintf", "-fls"})
_SUBSTITUTION = re.compile(r"`|\$\(|<\(|>\(")
_EXPANSION = re.compile(r"\$[A-Za-z_{]")
#: Redirections that write nothing: duplicating a descriptor, discarding output.
_HARMLESS_REDIRECT = re.compile(r"\d?>&\d|\d?>\s*/dev/null(?=\s|$|[;&|])")
_SEPARATORS = frozenset({";", "&", "&&", "|", "||", "|&", "<"})


def scrubbed_env(
    environ: Mapping[str, str] | None = None, *, api_key_env: str = "",
    secret_env: Iterable[str] = (),
) -> dict[str, str]:
    """``environ`` (default: this process's) without secrets, for a subprocess."""
    env = dict(os.environ if environ is None else environ)
    patterns = [p.upper() for p in (*SECRET_ENV_PATTERNS, *secret_env)]
    key = env.get(api_key_env, "") if api_key_env else ""
    out: dict[str, str] = {}
    for name, value in env.items():
        if name == api_key_env or any(fnmatchcase(name.upper(), p) for p in patterns):
            continue
        if len(key) >= 8 and key in value:  # the key copied under an innocent name
            continue
        out[name] = value
    return out


def is_dangerous(command: str, workspace: Path | None = None) -> bool:
    """True for shell commands with side effects (counted separately, R1.1/R1.3)."""
    return bool(dangerous_reason(command, workspace))


def dangerous_reason(command: str, workspace: Path | None = None) -> str:
    """Why ``command`` is dangerous, or ``""`` when it only reads inside ``workspace``.

    Without a workspace, any absolute path, ``~`` or ``..`` counts as outside it.
    """
    if "\n" in command or "\r" in command:
        return "a multi-line command"
    if _SUBSTITUTION.search(command):
        return "command substitution runs another command"
    if _EXPANSION.search(command):
        return "a variable expansion (its value is unknown until it runs)"
    command = _HARMLESS_REDIRECT.sub(" ", command)
    if ">" in command:
        return "output redirection writes a file"
    try:
        lex = shlex.shlex(command, posix=True, punctuation_chars=";&|()<")
        lex.whitespace_split = True
        tokens = list(lex)
    except ValueError:
        return "the command cannot be parsed"
    words: list[str] = []
    for tok in [*tokens, ";"]:
        if tok in ("(", ")"):
            return "a subshell"
        if tok not in _SEPARATORS:
            words.append(tok)
            continue
        if tok == "<":
            continue  # input redirection: the file read is checked as a word
        reason = _simple_command(words, workspace)
        if reason:
            return reason
        words = []
    return ""


def _simple_command(words: list[str], workspace: Path | None) -> str:
    if not words:
        return ""
    prog = words[0]
    if "=" in prog:
        return f"sets {prog.split('=', 1)[0]} for the command"
    if "/" in prog:
        return f"runs a program by path ({prog})"
    if prog not in SAFE_COMMANDS and prog != "git":
        return f"{prog} is not a read-only command"
    args = words[1:]
    for word in args:
        if _outside(word, workspace):
            return f"{word} is outside the workspace"
    check = _OPTION_CHECKS.get(prog)
    return check(args) if check is not None else ""


def _outside(word: str, workspace: Path | None) -> bool:
    for candidate in {word, word.partition("=")[2]} - {""}:
        if candidate.startswith("~"):
            return True
        path = Path(candidate)
        if workspace is None:
            if path.is_absolute() or ".." in path.parts:
                return True
            continue
        try:  # resolving follows symlinks: a link out of the workspace is outside too
            inside = (workspace / path).resolve().is_relative_to(workspace.resolve())
        except (OSError, RuntimeError, ValueError):
            return True
        if not inside:
            return True
    return False


def _long(word: str, *names: str) -> bool:
    """``word`` is ``--name`` (or ``--name=…``, or an abbreviation getopt accepts)."""
    if not word.startswith("--") or len(word) < 3:
        return False
    given = word[2:].split("=", 1)[0]
    return any(name.startswith(given) for name in names)


def _short(word: str, letters: str) -> bool:
    """``word`` is a cluster of short options containing one of ``letters``."""
    return (word.startswith("-") and not word.startswith("--")
            and any(c in word[1:] for c in letters))


def _writes_with(flag: str, *long_names: str) -> Callable[[list[str]], str]:
    def check(args: list[str]) -> str:
        for a in args:
            if (flag and _short(a, flag)) or _long(a, *long_names):
                return f"{a} writes a file or runs a program"
        return ""
    return check


def _find(args: list[str]) -> str:
    hit = next((a for a in args if a in _FIND_WRITES), None)
    return f"find {hit} writes or runs commands" if hit else ""


def _uniq(args: list[str]) -> str:
    files = [a for a in args if not a.startswith("-")]
    return "uniq with an output file writes it" if len(files) > 1 else ""


def _rg(args: list[str]) -> str:
    hit = next((a for a in args if a == "--pre" or a.startswith("--pre=")), None)
    return "rg --pre runs a program on every file" if hit else ""


def _git(args: list[str]) -> str:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] not in _GIT_GLOBAL_OK:
            return f"git {args[i]} changes what git runs or where"
        i += 1
    if i == len(args):
        return ""
    sub, rest = args[i], args[i + 1:]
    if sub not in SAFE_GIT:
        return f"git {sub} is not read-only"
    if sub in ("log", "diff", "show"):
        hit = next((a for a in rest if _long(a, "output") or _long(a, "ext-diff")), None)
        return f"git {sub} {hit} writes a file or runs a program" if hit else ""
    if sub == "branch":
        return _git_branch(rest)
    return ""


def _git_branch(rest: list[str]) -> str:
    options = [a for a in rest if a.startswith("-")]
    bad = next((a for a in options if a.split("=", 1)[0] not in _GIT_BRANCH_LIST), None)
    if bad is not None:
        return f"git branch {bad} changes branches"
    listing = {"-l", "--list", "--contains", "--no-contains", "--merged", "--no-merged",
               "--points-at"}
    if len(options) < len(rest) and not listing & {a.split("=", 1)[0] for a in options}:
        return "git branch NAME creates a branch"
    return ""


_OPTION_CHECKS: dict[str, Callable[[list[str]], str]] = {
    "git": _git,
    "find": _find,
    "sort": _writes_with("o", "output", "compress-program"),
    "tree": _writes_with("o", "output"),
    "date": _writes_with("s", "set"),
    "file": _writes_with("C", "compile"),
    "uniq": _uniq,
    "rg": _rg,
}
