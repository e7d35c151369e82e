"""kb's exceptions: one tree, each message says what went wrong and what to do next.

    KbError                      base class; ``exit_code`` is what the CLI exits with (1 unless said)
    ├── WorkspaceNotFoundError   no ``.workos/`` folder where kb looked
    ├── ConfigError              kb.toml / KB_* / flag values that are invalid
    ├── PersonaNotFoundError     ``--persona NAME`` names no bundled or workspace persona
    ├── PersonaFormatError       a file that is not a persona document
    ├── EmbedderError            the embedding model cannot be loaded or exported
    ├── EmptyIndexError          a search or question before anything was indexed
    ├── IndexLockedError         another kb process is writing this index (exit 4)
    ├── GeneratorError           the language model backend failed (unreachable, bad key, unknown model, ...)
    ├── IndexCorruptError        the index cannot be read and was not repaired
    ├── StoreUnavailableError    the vector store (a Chroma server) is unreachable or did not answer in time
    ├── StorageError             the file system failed: disk full, read-only, I/O error, a folder gone
    ├── DatasetError             an evaluation dataset or question file that cannot be read
    ├── SourceNotFoundError      a path that is not an indexed source (read_source, ``kb://`` resources)
    ├── AccessDeniedError        a path kb will never serve: outside the workspace, ``..``, a secret file
    └── BadRequest               a request to a kb server that is malformed (exit 2)

Every class crosses kb's local socket as itself (:mod:`kb.serve.client` rebuilds it by name from this module).

The CLI turns any ``KbError`` into one red line on stderr and ``exit_code``; users never see a traceback for a
known failure.
"""

from __future__ import annotations

import errno
import os


class KbError(Exception):
    """Base class of every error kb raises on purpose."""

    exit_code: int = 1


class WorkspaceNotFoundError(KbError):
    pass


class ConfigError(KbError):
    pass


class PersonaNotFoundError(KbError):
    pass


class PersonaFormatError(KbError):
    pass


class EmbedderError(KbError):
    pass


class EmptyIndexError(KbError):
    pass


class IndexLockedError(KbError):
    exit_code = 4


class GeneratorError(KbError):
    pass


class IndexCorruptError(KbError):
    pass


class StoreUnavailableError(KbError):
    """The vector store cannot be reached (a Chroma server down, refusing, or too slow); nothing was
    half-written: the next run completes the work."""


class DatasetError(KbError):
    """A dataset folder or question file that cannot be read."""


class SourceNotFoundError(KbError):
    """A path asked for that is not an indexed source of the workspace (or is gone from disk)."""


class AccessDeniedError(KbError):
    """A path kb refuses to read: absolute, with ``..``, resolving outside the workspace, or secret-named."""


class BadRequest(KbError):
    """A request to a kb server that is malformed (unknown method, bad parameters)."""

    exit_code = 2


class StorageError(KbError):
    """The file system refused a read or write of the index (disk full, read-only, I/O error, a folder that
    vanished). Transient: the index is left as it was, never treated as corrupt."""


# What the file system said, as the OSError errno or the SQLite message (Python's sqlite3 and Chroma's Rust
# SQLite both carry it): (errno, SQLite result code, message fragments) -> (what happened, what to do).
_PROBLEMS = (
    (
        (errno.ENOSPC, errno.EDQUOT),
        13,
        ("database or disk is full", "no space left on device", "disk quota exceeded"),
        "the disk is full",
        "Free some space and run the command again; the index was left as it was (it is not damaged).",
    ),
    (
        (errno.EROFS,),
        8,
        ("readonly database", "read-only file system"),
        "the file system is read-only",
        "Make it writable (e.g. remount it read-write) and run the command again; the index was left as it "
        "was.",
    ),
    (
        (errno.EIO,),
        10,
        ("disk i/o error", "input/output error"),
        "an I/O error (the disk may be failing; see dmesg)",
        "Check the disk, then run the command again; what was committed before the error is kept.",
    ),
    (
        (errno.ENOENT, errno.ENOTDIR, errno.ESTALE),
        14,
        ("unable to open database file", "no such file or directory"),
        "a file or folder of the index vanished or cannot be opened",
        "Check that nothing deletes .workos/.kb while kb runs, then run the command again: kb index rebuilds "
        "what is missing.",
    ),
    (
        (errno.EACCES, errno.EPERM),
        23,
        ("permission denied", "operation not permitted", "authorization denied"),
        "permission denied",
        "Fix the permissions of the index folder and run the command again; the index was left as it was.",
    ),
)


def storage_problem(exc: BaseException) -> tuple[str, str] | None:
    """(what happened, what to do) when ``exc`` — or an exception it was raised from — is a file system
    failure (an OSError's errno, or an SQLite "disk is full" / "disk I/O error" / "readonly database" /
    "unable to open" error, from Python or from Chroma); None for anything else (a bug, real corruption)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if getattr(current, "sqlite_errorcode", None) == 1032 or "(code: 1032)" in text:
            return _PROBLEMS[3][3:]  # SQLITE_READONLY_DBMOVED: the database file was deleted or moved
        for errnos, code, fragments, what, todo in _PROBLEMS:
            if isinstance(current, OSError) and current.errno in errnos:
                return what, todo
            if any(f in text for f in fragments) or f"(code: {code})" in text:
                return what, todo
        current = current.__cause__ or current.__context__
    return None


def storage_error(exc: BaseException, where: object) -> StorageError | None:
    """``exc`` as a one-line :class:`StorageError` about ``where`` (the index folder), or None when it is not
    a file system failure."""
    problem = storage_problem(exc)
    if problem is None:
        return None
    if problem == _PROBLEMS[3][3:] and _read_only(where):  # SQLite's "unable to open" on a read-only mount
        problem = _PROBLEMS[1][3:]
    what, todo = problem
    return StorageError(f"Cannot use the index in {where}: {what}. {todo}")


def _read_only(where: object) -> bool:
    try:
        return bool(os.statvfs(str(where)).f_flag & os.ST_RDONLY)
    except OSError:
        return False
