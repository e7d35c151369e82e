"""Which files of a workspace are indexed, and why the others are not.

Nothing here reads a secret file: names like ``.env``, ``*.pem``, ``*.key`` and ``id_rsa*`` are rejected from
their name alone. Every file passed over is reported with a reason, never silently dropped: also a name
holding a newline or another control character (it would break every line-oriented output: reports, logs,
citations), and a file with more than one hard link (another name of it may be outside the workspace, and
nothing here can see where; ``follow_hardlinks`` indexes them anyway).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingest.layout import PRUNED_DIRS

SUPPORTED_SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".docx": "docx",
}

SECRET_PATTERNS = [
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "*.gpg",
    "*.asc",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    "credentials",
    "credentials.*",
    "*.secret",
    "*.secrets",
    "*.tfstate",
]


@dataclass(frozen=True)
class Candidate:
    """A file that will be read: ``path`` is relative to the workspace root, with ``/`` separators."""

    path: str
    abspath: Path
    kind: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a gitignore-like glob (``**`` spans folders, ``*`` does not) to a regex."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.S)  # re.S: a name with a newline is matched, then reported


def _normalize(pattern: str) -> str:
    # "./x" means "x"; removeprefix, not lstrip("./"), which would also eat the dot of ".workos/..."
    return pattern.strip().removeprefix("./")


def glob_literal(pattern: str) -> str:
    """A glob's literal prefix, before its first wildcard: ``.workos/context/**`` -> ``.workos/context/``."""
    return re.split(r"[*?\[]", _normalize(pattern), maxsplit=1)[0]


class GlobSet:
    def __init__(self, patterns: list[str]):
        self.patterns = [_normalize(p) for p in patterns]
        self._regexes = [_glob_to_regex(p) for p in self.patterns if p]
        self._literals = [glob_literal(p) for p in self.patterns]

    def match(self, relpath: str) -> bool:
        return any(r.match(relpath) for r in self._regexes)

    def may_contain(self, reldir: str) -> bool:
        """Could a file below ``reldir`` match? (Used to prune the walk.)"""
        prefix = reldir + "/"
        return any(lit.startswith(prefix) or prefix.startswith(lit) or not lit for lit in self._literals)


_SYMLINKED_FOLDER = "symlinked folder: not followed (link the files, or index the target)"


class _Rules:
    """Discovery's rules for one include/exclude pair: which folders are entered and which files are looked
    at. :func:`discover` (a walk) and :func:`discover_paths` (named paths) both decide with them."""

    def __init__(self, include: list[str], exclude: list[str] | None):
        self.includes = GlobSet(include)
        self.excludes = GlobSet(exclude or [])

    def enters(self, reldir: str) -> bool:
        """Is the folder ``reldir`` descended into (by its name and the globs; symlinks are checked apart)?"""
        name = reldir.rsplit("/", 1)[-1]
        if name in PRUNED_DIRS or self.excludes.match(reldir) or self.excludes.match(reldir + "/"):
            return False
        return self.includes.may_contain(reldir)

    def selects(self, relpath: str) -> bool:
        """Is the file ``relpath`` included and not excluded (it is then checked: :func:`_check_file`)?"""
        return self.includes.match(relpath) and not self.excludes.match(relpath)


_SECRET = re.compile("|".join(fnmatch.translate(p) for p in SECRET_PATTERNS))  # one pass, not one per glob


def is_secret(name: str) -> bool:
    return _SECRET.match(name.lower()) is not None


def discover(
    root: Path,
    include: list[str],
    exclude: list[str] | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    *,
    follow_hardlinks: bool = False,
    folders: list[str] | None = None,
) -> tuple[list[Candidate], list[Skipped]]:
    """Walk ``root`` and return the files to index (sorted by path) and those skipped, each with a reason.

    Only metadata is read here (``lstat``/``stat``); file contents are read by :func:`read_candidate`.
    ``folders``, when given, receives every folder listed (relative; ``""`` is the root).
    """
    root = root.resolve()
    rules = _Rules(include, exclude)
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []

    def onerror(err: OSError) -> None:
        rel = _rel(root, Path(err.filename)) if err.filename else "?"
        if rules.includes.may_contain(rel) or rules.includes.match(rel):
            skipped.append(Skipped(rel, f"cannot list folder: {err.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        here = Path(dirpath)
        reldir = _rel(root, here)
        if folders is not None:
            folders.append(reldir)
        keep = []
        for d in sorted(dirnames):
            rel = f"{reldir}/{d}" if reldir else d
            full = here / d
            if not rules.enters(rel):
                continue
            if full.is_symlink():
                skipped.append(Skipped(rel, _SYMLINKED_FOLDER))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = f"{reldir}/{name}" if reldir else name
            if not rules.selects(rel):
                continue
            verdict = _check_file(root, here / name, rel, name, max_bytes, follow_hardlinks)
            if isinstance(verdict, Skipped):
                skipped.append(verdict)
            else:
                candidates.append(verdict)
    candidates.sort(key=lambda c: c.path)
    skipped.sort(key=lambda s: s.path)
    return candidates, skipped


def discover_paths(
    root: Path,
    include: list[str],
    exclude: list[str] | None,
    max_bytes: int,
    paths: Iterable[str],
    *,
    follow_hardlinks: bool = False,
) -> tuple[list[Candidate], list[Skipped]]:
    """:func:`discover` restricted to ``paths`` (relative to ``root``): the same verdict per file, by the same
    rules, without walking the tree. Paths that are gone, folders, or not selected are left out."""
    rules = _Rules(include, exclude)
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    for rel in sorted(set(paths)):
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts):
            continue
        folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if not all(rules.enters(d) and not (root / d).is_symlink() for d in folders):
            continue
        full = root / rel
        if full.is_symlink() and full.is_dir():  # a symlinked folder: reported as the walk reports it
            if rules.enters(rel):
                skipped.append(Skipped(rel, _SYMLINKED_FOLDER))
            continue
        if not rules.selects(rel) or not os.path.lexists(full) or full.is_dir():
            continue
        verdict = _check_file(root, full, rel, parts[-1], max_bytes, follow_hardlinks)
        if isinstance(verdict, Skipped):
            skipped.append(verdict)
        else:
            candidates.append(verdict)
    return candidates, skipped


def _rel(root: Path, path: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return str(path)
    return PurePosixPath(*rel.parts).as_posix() if rel.parts else ""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(path: str) -> str:
    """``path`` with control characters shown as escapes (``\\n``), for reports and logs."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], path)


def _check_file(
    root: Path, full: Path, rel: str, name: str, max_bytes: int, follow_hardlinks: bool = False
) -> Candidate | Skipped:
    if _CONTROL.search(rel):
        return Skipped(
            printable(rel), "the name holds a newline or control character: rename the file to index it"
        )
    if is_secret(name):
        return Skipped(rel, "looks like a secret (credentials or key file): never read")
    try:
        lst = full.lstat()
    except FileNotFoundError:
        return Skipped(rel, "vanished while scanning")
    except OSError as exc:
        return Skipped(rel, f"cannot stat: {exc.strerror}")
    target = full
    if stat.S_ISLNK(lst.st_mode):
        try:
            target = full.resolve(strict=True)
        except (OSError, RuntimeError):
            return Skipped(rel, "broken symlink")
        if not target.is_relative_to(root):
            return Skipped(rel, f"symlink resolves outside the workspace ({target}): not read")
        if is_secret(target.name):
            return Skipped(rel, "symlink to a secret file: never read")
        try:
            st = target.stat()
        except OSError as exc:
            return Skipped(rel, f"cannot stat symlink target: {exc.strerror}")
    else:
        st = lst
    if not stat.S_ISREG(st.st_mode):
        return Skipped(rel, "not a regular file (device, socket or pipe)")
    if st.st_nlink > 1 and not follow_hardlinks:
        return Skipped(
            rel,
            f"has {st.st_nlink} hard links: another name may be outside the workspace (copy the file, or set "
            "follow_hardlinks = true in kb.toml to index it)",
        )
    kind = SUPPORTED_SUFFIXES.get(full.suffix.lower())
    if kind is None:
        return Skipped(rel, f"unsupported file type {full.suffix or '(no extension)'!r}")
    if st.st_size == 0:
        return Skipped(rel, "empty file")
    if st.st_size > max_bytes:
        return Skipped(
            rel,
            f"larger than the size cap ({st.st_size / 1e6:.1f} MB > {max_bytes / 1e6:.1f} MB; "
            "raise max_file_mb in kb.toml to index it)",
        )
    if not os.access(target, os.R_OK):
        return Skipped(rel, "permission denied")
    return Candidate(path=rel, abspath=full, kind=kind, size=st.st_size, mtime_ns=st.st_mtime_ns)


def read_candidate(candidate: Candidate, max_bytes: int) -> bytes:
    """Read a candidate's bytes, refusing to read more than ``max_bytes`` (the file may have grown)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(candidate.abspath, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{candidate.path} is no longer a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(f"grew beyond the size cap ({max_bytes / 1e6:.1f} MB) while being read")
    return data
