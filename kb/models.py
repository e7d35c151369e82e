"""kb's public result types: small dataclasses with ``to_dict()`` for JSON output."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class _Dict:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]


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

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for key in ("url", "page"):
            if d[key] is None:
                del d[key]
        return d


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
class Answer(_Dict):
    question: str
    persona: str | None
    answer: str
    abstained: bool
    citations: list[Citation] = field(default_factory=list)
    nearest: list[Hit] = field(default_factory=list)  # when abstaining: the closest sources found
    persona_title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "persona": self.persona,
            "answer": self.answer,
            "abstained": self.abstained,
            "citations": [c.to_dict() for c in self.citations],
            "nearest": [
                {"path": h.path, "start_line": h.start_line, "end_line": h.end_line, "heading": h.heading,
                 "score": h.score}
                for h in self.nearest
            ],
        }


@dataclass
class SkippedFile(_Dict):
    path: str
    reason: str


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
            "paths": {
                "added": self.added,
                "updated": self.updated,
                "removed": self.removed,
                "renamed": [{"from": a, "to": b} for a, b in self.renamed],
            },
        }


@dataclass
class SourceStatus(_Dict):
    path: str
    content_hash: str
    chunks: int
    indexed_at: float
    source_type: str


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
