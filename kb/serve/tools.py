"""The operations kb offers to agents and teammates, transport-neutral: MCP (:mod:`kb.serve.mcp`) and HTTP
(``kb serve``) both expose exactly these.

:class:`Tools` wraps a :class:`kb.service.Service` (the library, or the socket client of the process that owns
the index) and its :class:`kb.workspace.Workspace`. Every method validates its arguments (types, ranges,
lengths) and returns a plain JSON-able dict shaped like the CLI's ``--json`` output of the same verb:

* :meth:`Tools.search` -> ``{"query", "hits": [{"rank", "score", "path", "start_line", "end_line", "heading",
  "text", "source_type", "url"?, ...}]}`` (``kb search --json``);
* :meth:`Tools.ask` -> ``Answer.to_dict()`` (``kb ask --json``);
* :meth:`Tools.read_source` -> ``{"path", "start_line", "end_line", "total_lines", "truncated", "text",
  "url"?}``: the exact lines a citation points at;
* :meth:`Tools.status` -> ``Status.to_dict()`` (``kb status --json``);
* :meth:`Tools.personas` -> ``{"personas": [{"name", "title", "origin", "domain", "when_to_consult"}]}``.

Failures are :class:`kb.errors.KbError` subclasses with one-line messages: :class:`kb.errors.BadRequest` for
an invalid argument, :class:`kb.errors.SourceNotFoundError` for a path that is not an indexed source,
:class:`kb.errors.AccessDeniedError` for a path kb never serves.

``read_source`` is the security boundary for reading files: only paths that ``Service.status()`` lists as
indexed sources, given as workspace-relative ``/`` paths (no absolute path, no ``..``, no backslash, no
control character), resolving inside the workspace root (a symlink pointing out is refused), never a
secret-named file (:func:`ingest.discovery.is_secret`, on the path and on what it resolves to), at most
:data:`MAX_READ_BYTES` read and :data:`MAX_LINES` lines / :data:`MAX_CHARS` characters returned.

Light on purpose: no index stack is imported, so a client of a running ``kb watch`` stays thin.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ingest.chunking import split_lines
from ingest.discovery import SUPPORTED_SUFFIXES, is_secret
from ingest.errors import LoadError
from ingest.layout import PRUNED_DIRS, SOURCE_TYPES
from ingest.loaders import load_document
from kb.errors import AccessDeniedError, BadRequest, SourceNotFoundError
from kb.personas import list_personas
from kb.service import Service
from kb.workspace import Workspace

MODES = ("hybrid", "dense", "bm25")
TYPES = (*SOURCE_TYPES.values(), "other")
MAX_QUERY = 2000  # characters of a query or question
MAX_K_SEARCH = 100
MAX_K_ASK = 50
MAX_FILTERS = 20  # type / path items
MAX_GLOB = 256  # characters of one path glob
MAX_NAME = 200  # characters of a persona name or an llm spec
MAX_PATH = 1024  # characters of a source path
MAX_LINES = 400  # lines read_source returns at most
MAX_CHARS = 100_000  # characters read_source returns at most
MAX_READ_BYTES = 64 * 1024 * 1024  # bytes read_source reads from disk at most


class Tools:
    """search / ask / read_source / status / personas over one workspace, as JSON-able dicts."""

    def __init__(
        self,
        service: Service,
        workspace: Workspace,
        *,
        max_lines: int = MAX_LINES,
        max_chars: int = MAX_CHARS,
    ):
        self.service = service
        self.workspace = workspace
        self.max_lines, self.max_chars = max_lines, max_chars  # what one read_source reply carries at most

    # --- the verbs ----------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 10,
        mode: str | None = None,
        type: str | list[str] | None = None,  # the public name of the filter (CLI: --type)
        path: str | list[str] | None = None,
    ) -> dict[str, Any]:
        """The ``k`` chunks most relevant to ``query``: ``{"query", "hits": [...], "stale", "refreshed"}``
        (the sources changed on disk since they were indexed: left as they were, or re-indexed first)."""
        query = _text("query", query, MAX_QUERY)
        k = _int("k", k, 1, MAX_K_SEARCH)
        mode = _choice("mode", mode, MODES)
        types = _items("type", type, MAX_NAME, TYPES)
        globs = _items("path", path, MAX_GLOB)
        hits = self.service.search(query, k, mode=mode, source_type=types, path=globs)
        return {  # as kb search --json (a library service re-indexes changed sources first: kb.api)
            "query": query,
            "hits": [h.to_dict() for h in hits],
            "stale": list(getattr(hits, "stale", [])),
            "refreshed": list(getattr(hits, "refreshed", [])),
        }

    def ask(
        self,
        question: str,
        persona: str | None = "auto",
        k: int | None = None,
        llm: str | None = None,
    ) -> dict[str, Any]:
        """A grounded answer with verified, line-exact citations, or an abstention: ``Answer.to_dict()``."""
        question = _text("question", question, MAX_QUERY)
        persona = _name("persona", persona)
        k = None if k is None else _int("k", k, 1, MAX_K_ASK)
        llm = _name("llm", llm)
        if llm is not None and any(c in llm for c in "/\\~"):
            raise BadRequest(
                f"llm {llm!r} names a file; a model file can only be chosen in kb.toml (llm = ...) by the "
                "workspace's owner. Use extractive, openai-compatible[:MODEL] or llama-cpp:smollm2."
            )
        answer = self.service.ask(question, persona=persona, k=k, llm=llm)
        return answer.to_dict()

    def read_source(
        self, path: str, start_line: int | None = None, end_line: int | None = None
    ) -> dict[str, Any]:
        """Lines ``start_line``-``end_line`` (1-based, inclusive) of the indexed source ``path``, exactly as
        citations number them (for PDF, HTML and DOCX: the text kb extracted)."""
        rel = source_path(path)
        start = 1 if start_line is None else _int("start_line", start_line, 1, 10**9)
        end = None if end_line is None else _int("end_line", end_line, 1, 10**9)
        if end is not None and end < start:
            raise BadRequest(f"end_line ({end}) is before start_line ({start}).")
        indexed = {s.path for s in self.service.status().sources}
        if rel not in indexed:
            raise SourceNotFoundError(
                f"{rel} is not an indexed source of this workspace. Paths come from search hits and "
                "citations (or status); they are relative to the workspace root, like projects/prds/x.md."
            )
        lines, url = _read_lines(self.workspace.root, rel)
        total = len(lines)
        if start > total:
            raise BadRequest(f"start_line {start} is past the end of {rel} ({total} lines).")
        wanted = min(total, end if end is not None else total)
        chosen: list[str] = []
        size, clipped = 0, False
        for line in lines[start - 1 : min(wanted, start + self.max_lines - 1)]:
            if chosen and size + len(line) + 1 > self.max_chars:
                break
            clipped = clipped or len(line) > self.max_chars
            chosen.append(line[: self.max_chars])
            size += len(chosen[-1]) + 1
        last = start + len(chosen) - 1
        out: dict[str, Any] = {
            "path": rel,
            "start_line": start,
            "end_line": last,
            "total_lines": total,
            "truncated": clipped or last < wanted,  # more lines asked for than one reply carries
            "text": "\n".join(chosen),
        }
        if url:
            out["url"] = url
        return out

    def status(self) -> dict[str, Any]:
        """Freshness and contents: last indexed, the watcher (running, pending changes, last error) and the
        indexed sources."""
        return self.service.status().to_dict()

    def personas(self) -> dict[str, Any]:
        """The personas an answer can take: name, title, origin, domain, the questions they answer."""
        items = list_personas(self.workspace.personas_dir)
        return {
            "personas": [
                {
                    "name": p.name,
                    "title": p.title,
                    "origin": p.origin,
                    "domain": p.domain,
                    "when_to_consult": p.consult_questions,
                }
                for p in items
            ]
        }


# --- paths --------------------------------------------------------------------------------------------------
def source_path(path: Any) -> str:
    """``path`` as a clean workspace-relative ``/`` path, or :class:`AccessDeniedError` / :class:`BadRequest`.

    Refused from the name alone: absolute paths, ``..``, backslashes, control characters, kb's own state
    folders and secret-named files. (Whether it is an indexed source is checked by :meth:`Tools.read_source`.)
    """
    if not isinstance(path, str):
        raise BadRequest(f"path must be a string, not {_kind(path)}.")
    if not path.strip():
        raise BadRequest("path is empty: give a workspace-relative path such as projects/prds/x.md.")
    if len(path) > MAX_PATH:
        raise BadRequest(f"path is longer than {MAX_PATH} characters.")
    if any(ord(c) < 32 or ord(c) == 127 for c in path) or "\\" in path:
        raise AccessDeniedError("path contains a control character or a backslash; kb does not serve it.")
    if path.startswith("/") or path.startswith("~") or (len(path) > 1 and path[1] == ":"):
        raise AccessDeniedError(
            f"{path} is absolute; kb serves only workspace-relative paths of indexed sources."
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise AccessDeniedError(f"{path} leaves the workspace (..); kb serves only indexed sources in it.")
    if not parts:
        raise BadRequest("path names no file: give a workspace-relative path such as projects/prds/x.md.")
    if any(p in PRUNED_DIRS for p in parts[:-1]) or is_secret(parts[-1]):
        raise AccessDeniedError(f"{path} is a secret or kb-internal file; kb never serves it.")
    return PurePosixPath(*parts).as_posix()


def _read_lines(root: Path, rel: str) -> tuple[list[str], str | None]:
    """The lines of indexed source ``rel`` as kb numbered them, and its URL (a resource's front matter)."""
    base = root.resolve()
    try:
        full = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        raise SourceNotFoundError(
            f"{rel} is indexed but no longer on disk (deleted or renamed?); the watcher or kb index will "
            "catch up. Search again for its new place."
        ) from None
    if not full.is_relative_to(base):
        raise AccessDeniedError(f"{rel} resolves outside the workspace; kb does not serve it.")
    if is_secret(full.name) or any(p in PRUNED_DIRS for p in full.relative_to(base).parts[:-1]):
        raise AccessDeniedError(f"{rel} resolves to a secret or kb-internal file; kb never serves it.")
    kind = SUPPORTED_SUFFIXES.get(full.suffix.lower())
    if kind is None:
        raise SourceNotFoundError(f"{rel} is not a file type kb indexes.")
    data = _read_bytes(full, rel)
    try:
        doc = load_document(data, kind)
    except LoadError as exc:
        raise SourceNotFoundError(f"{rel} can no longer be read as {kind}: {exc}") from None
    url = doc.metadata.get("url")
    return split_lines(doc.text), url if isinstance(url, str) else None


def _read_bytes(full: Path, rel: str) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(full, flags)  # full is resolved: O_NOFOLLOW refuses a symlink swapped in since
    except OSError as exc:
        raise SourceNotFoundError(f"{rel} cannot be opened: {exc.strerror}.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AccessDeniedError(f"{rel} is not a regular file; kb does not serve it.")
        if st.st_size > MAX_READ_BYTES:
            raise BadRequest(f"{rel} is larger than {MAX_READ_BYTES // 2**20} MiB; kb does not serve it.")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_READ_BYTES + 1)
    finally:
        os.close(fd)


# --- argument checks ----------------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, not {_kind(value)}.")
    if not value.strip():
        raise BadRequest(f"{name} is empty.")
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters ({len(value)}); shorten it.")
    if "\x00" in value:
        raise BadRequest(f"{name} contains a NUL character.")
    return value


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, not {_kind(value)}.")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi} (got {value}).")
    return value


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)} (got {value!r}).")
    return value


def _name(name: str, value: Any) -> str | None:
    if value is None:
        return None
    text = _text(name, value, MAX_NAME).strip()
    if any(ord(c) < 32 for c in text):
        raise BadRequest(f"{name} contains a control character.")
    return text


def _items(name: str, value: Any, limit: int, allowed: Sequence[str] | None = None) -> list[str] | None:
    """A string or a list of strings (each at most ``limit`` characters, from ``allowed`` if given)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise BadRequest(f"{name} must be a string or a list of strings, not {_kind(value)}.")
    if len(items) > MAX_FILTERS:
        raise BadRequest(f"{name} has more than {MAX_FILTERS} items.")
    for v in items:
        if not v.strip() or len(v) > limit or any(ord(c) < 32 for c in v):
            raise BadRequest(f"{name} item {v[:40]!r}: empty, over {limit} characters or control characters.")
        if allowed is not None and v not in allowed:
            raise BadRequest(f"{name} must be one of {', '.join(allowed)} (got {v!r}).")
    return list(items) or None
