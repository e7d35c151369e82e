"""kb's public result types: small dataclasses with ``to_dict()`` for JSON output."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

Progress = Callable[[str, int, int], None]
"""A progress callback: ``(stage, done, total)``; the CLI draws it as a bar (the library never prints)."""

OnToken = Callable[[str], None]
"""Receives a language model's answer as it is written, piece by piece."""


class _Dict:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild from ``dataclasses.asdict`` output (how kb.serve.client carries results from ``kb
        watch``)."""
        hints = _hints(cls)  # type: ignore[arg-type]  # a class is hashable; mypy cannot see it for Self
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        return cls(**{n: _revive(hints[n], data[n]) for n in names if n in data})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field types (resolving them evaluates every annotation: done once per class)."""
    return typing.get_type_hints(cls)


def _revive(tp: Any, value: Any) -> Any:
    """``value`` (JSON) as type ``tp``: nested kb dataclasses, lists of them, tuples."""
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and args:
        return [_revive(args[0], v) for v in value]
    if origin is tuple:
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, _Dict) and isinstance(value, dict):
                return arg.from_dict(value)
        return value
    if isinstance(tp, type) and issubclass(tp, _Dict) and isinstance(value, dict):
        return tp.from_dict(value)
    return value


@dataclass
class Hit(_Dict):
    """One retrieved chunk. ``path`` is relative to the workspace root with ``/`` separators."""

    rank: int
    score: float
    path: str
    start_line: int
    end_line: int
    heading: str
    text: str
    source_type: str
    chunk_id: str = ""
    title: str | None = None
    url: str | None = None
    page: int | None = None
    also_in: list[str] = field(
        default_factory=list
    )  # other sources holding the same text (folded into this hit)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for key in ("url", "page"):
            if d[key] is None:
                del d[key]
        if not d["also_in"]:
            del d["also_in"]
        return d


class Hits(list[Hit]):
    """What a search returns: the hits, best first (a list), and how fresh the index was for them:
    ``stale`` lists indexed sources that changed on disk and were not re-indexed, ``refreshed`` those
    re-indexed first."""

    def __init__(self, hits: Iterable[Hit] = (), stale: Iterable[str] = (), refreshed: Iterable[str] = ()):
        super().__init__(hits)
        self.stale = list(stale)
        self.refreshed = list(refreshed)


@dataclass
class Freshness(_Dict):
    """The index against the files before a search or an answer (a stat per file, nothing read): the changed
    sources re-indexed first (``refreshed``) and those left stale (``stale``: changed or deleted since they
    were indexed), with why they were left (``reason``)."""

    refreshed: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    reason: str | None = None
    ms: float = 0.0


@dataclass
class Citation(_Dict):
    """A quote that really is at ``path`` lines ``start_line``-``end_line``."""

    id: int
    path: str
    start_line: int
    end_line: int
    heading: str
    quote: str
    score: float
    url: str | None = None

    @property
    def location(self) -> str:
        loc = f"{self.path}:{self.start_line}-{self.end_line}"
        return f"{loc} › {self.heading}" if self.heading else loc

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["url"] is None:
            del d["url"]
        return d


@dataclass
class AnswerSentence(_Dict):
    """One sentence of an answer, the citation ids it carries, and whether those citations support it."""

    text: str
    citations: list[int] = field(default_factory=list)
    supported: bool = True


@dataclass
class Answer(_Dict):
    question: str
    persona: str | None
    answer: str
    abstained: bool
    citations: list[Citation] = field(default_factory=list)
    nearest: list[Hit] = field(default_factory=list)  # when abstaining: the closest sources found
    persona_title: str | None = None
    backend: str = "extractive"
    sentences: list[AnswerSentence] = field(default_factory=list)
    persona_picked: bool = False  # True when kb chose the persona for this question (no --persona)
    stale: list[str] = field(default_factory=list)  # indexed sources changed on disk and not re-indexed
    refreshed: list[str] = field(default_factory=list)  # changed sources re-indexed before answering

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "persona": self.persona,
            "persona_title": self.persona_title,
            "answer": self.answer,
            "abstained": self.abstained,
            "backend": self.backend,
            "persona_picked": self.persona_picked,
            "stale": self.stale,
            "refreshed": self.refreshed,
            "sentences": [s.to_dict() for s in self.sentences],
            "citations": [c.to_dict() for c in self.citations],
            "nearest": [
                {
                    "path": h.path,
                    "start_line": h.start_line,
                    "end_line": h.end_line,
                    "heading": h.heading,
                    "score": h.score,
                }
                for h in self.nearest
            ],
        }


@dataclass
class SkippedFile(_Dict):
    path: str
    reason: str


@dataclass
class RedactedSecret(_Dict):
    """A credential found in a document and replaced by ``[secret: KIND]``: where and what kind, never the
    secret. ``line`` 0: in the document's metadata (a PDF or DOCX title, an HTML title)."""

    path: str
    line: int
    kind: str


@dataclass
class IndexReport(_Dict):
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    rebuilt: bool = False
    repaired: list[str] = field(default_factory=list)
    redacted: list[RedactedSecret] = field(default_factory=list)  # secrets replaced in the files read now

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "removed": len(self.removed),
            "renamed": len(self.renamed),
            "unchanged": self.unchanged,
            "skipped": [s.to_dict() for s in self.skipped],
            "chunks_embedded": self.chunks_embedded,
            "seconds": round(self.seconds, 3),
            "chunks_total": self.chunks_total,
            "rebuilt": self.rebuilt,
            "repaired": self.repaired,
            "redacted": [r.to_dict() for r in self.redacted],
            "paths": {
                "added": self.added,
                "updated": self.updated,
                "removed": self.removed,
                "renamed": [{"from": a, "to": b} for a, b in self.renamed],
            },
        }


@dataclass
class DoctorCheck(_Dict):
    """One check of ``kb doctor``: ``ok``, or what is wrong (``message``) and how to fix it (``fix``);
    ``repaired`` when ``--repair`` fixed it."""

    name: str
    ok: bool
    message: str
    fix: str | None = None
    repaired: bool = False


@dataclass
class DoctorReport(_Dict):
    workspace: str
    checks: list[DoctorCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[DoctorCheck]:
        """Checks that failed and were not repaired."""
        return [c for c in self.checks if not c.ok and not c.repaired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "ok": not self.problems,
            "problems": len(self.problems),
            "repaired": sum(c.repaired for c in self.checks),
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass
class SourceStatus(_Dict):
    path: str
    content_hash: str
    chunks: int
    indexed_at: float
    source_type: str


@dataclass
class WatcherStatus(_Dict):
    """The ``kb watch`` process of a workspace, as ``kb status`` shows it."""

    running: bool
    pid: int | None = None
    mode: str = ""  # "inotify", or "polling" after a watch-limit error
    started_at: float | None = None
    last_event_at: float | None = None
    last_event: str | None = None
    pending: int = 0
    last_error: str | None = None
    last_reindex_at: float | None = None
    served: int = 0  # requests answered for other processes (search, ask, status, index, ...)
    store_down_since: float | None = None  # the vector store stopped answering; changes wait (pending)
    next_retry_at: float | None = None  # when the waiting changes are tried again


@dataclass
class StoreStatus(_Dict):
    """Where a workspace's vectors live, as ``kb status`` shows it."""

    kind: str  # "embedded" (a Chroma folder in the workspace) or "server" (a Chroma server)
    location: str  # the folder, or the server's URL
    collection: str  # the collection of the current index settings
    collections: list[str] | None = None  # this workspace's collections, no one else's (None: not asked)
    vectors: int | None = None  # vectors in ``collection`` (None: not asked, or the store did not answer)
    error: str | None = None  # why the store could not be asked
    tenant: str | None = None
    database: str | None = None


@dataclass
class Status(_Dict):
    workspace: str
    index_dir: str
    model: str
    embedder_runtime: str
    fingerprint: str | None
    sources_count: int
    chunks_count: int
    last_indexed_at: float | None
    sources: list[SourceStatus] = field(default_factory=list)
    watcher: WatcherStatus | None = None  # None: kb watch never ran here
    store: StoreStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["sources"] = [s.to_dict() for s in self.sources]
        return d


@dataclass
class PersonaInfo(_Dict):
    name: str
    title: str
    origin: str  # "bundled" or "workspace"
    path: str
    domain: str = ""


@dataclass
class ResourceInfo(_Dict):
    """A recommended resource: ``status`` is fetched, stale, unavailable, error or missing (never fetched)."""

    url: str
    title: str
    status: str
    reason: str | None = None
    fetched_at: str | None = None  # ISO 8601, UTC
    bytes: int = 0
    chunks: int = 0
    pages: int = 0
    path: str = ""  # its folder, relative to the workspace
    origins: list[str] = field(default_factory=list)  # personas (or kb.toml / import) that name it
    pinned: bool = False
    source: str | None = None  # mirror folder or URL it is fetched from, when not the URL itself


@dataclass
class ResourceOutcome(_Dict):
    """What one fetch did to one resource."""

    url: str
    status: str  # fetched, unchanged, fresh (skipped), pinned (skipped), unavailable, error
    reason: str | None = None
    pages_written: int = 0
    pages_unchanged: int = 0
    pages_failed: list[dict[str, str]] = field(default_factory=list)  # [{"url", "reason"}]
    bytes_downloaded: int = 0


@dataclass
class ResourceFetchReport(_Dict):
    resources: list[ResourceOutcome] = field(default_factory=list)
    index: IndexReport | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "resources": [r.to_dict() for r in self.resources],
            "chunks_embedded": self.index.chunks_embedded if self.index else 0,
            "index": self.index.to_dict() if self.index else None,
            "seconds": round(self.seconds, 3),
        }
