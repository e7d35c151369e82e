"""The library: ``KnowledgeBase`` does everything; the CLI is a thin client of it."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb.answer import Answerer, Evidence, ExtractiveAnswerer
from kb.embedders import Embedder, make_embedder
from kb.errors import ConfigError, EmptyIndexError, IndexCorruptError, IndexLockedError
from kb.indexer import Indexer, Progress, collection_name, fingerprint
from kb.manifest import Manifest
from kb.models import Answer, Hit, IndexReport, PersonaInfo, SourceStatus, Status
from kb.personas import Persona, get_persona, list_personas
from kb.settings import Settings, load_settings
from kb.store import ChromaStore, Store, quarantine
from kb.workspace import Workspace, find_workspace

log = logging.getLogger(__name__)


class KnowledgeBase:
    """A workspace's knowledge base.

    >>> kb = KnowledgeBase.open("data")            # doctest: +SKIP
    >>> kb.index().chunks_embedded                  # doctest: +SKIP
    >>> kb.ask("How should we paginate the notifications API?", persona="backend-engineer")  # doctest: +SKIP

    Backends are injected (``embedder``, ``store``, ``answerer``); ``None`` builds them from settings.
    """

    def __init__(
        self,
        workspace: Workspace,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        store: Store | None = None,
        answerer: Answerer | None = None,
    ):
        self.workspace = workspace
        self.settings = settings
        self._embedder = embedder
        self._store = store
        self._answerer = answerer
        self._manifest: Manifest | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> KnowledgeBase:
        """Open the workspace at ``path`` (or find it: ``KB_WORKSPACE``, then the current folder and its parents).

        Keyword arguments override settings (``top_k=8``) or inject backends (``embedder=...``).
        """
        backends = {k: overrides.pop(k) for k in ("embedder", "store", "answerer") if k in overrides}
        ws = find_workspace(path)
        settings = load_settings(ws.config_path, **overrides)
        return cls(ws, settings, **backends)

    # --- backends -----------------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            cache = self.settings.model_cache_dir or (self.workspace.state_dir / "models")
            self._embedder = make_embedder(self.settings.embedder, self.settings.embedder_runtime, Path(cache))
        return self._embedder

    def _manifest_rw(self) -> Manifest:
        if self._manifest is None:
            self.workspace.ensure_state_dir()
            self._manifest = Manifest(self.workspace.state_dir / "manifest.sqlite3")
        return self._manifest

    def _manifest_ro(self) -> Manifest:
        if self._manifest is None:
            path = self.workspace.state_dir / "manifest.sqlite3"
            if not path.exists():
                raise EmptyIndexError(
                    f"Nothing is indexed in {self.workspace.root} yet. Run: kb index --workspace {self.workspace.root}"
                )
            self._manifest = Manifest(path)
        return self._manifest

    def _store_for(self, fp: str) -> Store:
        if self._store is None:
            self._store = ChromaStore(self.workspace.state_dir / "chroma", collection_name(fp))
        return self._store

    @property
    def answerer(self) -> Answerer:
        if self._answerer is None:
            if self.settings.answerer != "extractive":
                raise ConfigError(
                    f"Unknown answerer {self.settings.answerer!r}. Available: extractive."
                )
            self._answerer = ExtractiveAnswerer(self.embedder.embed, self.settings.min_relevance)
        return self._answerer

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        state = self.workspace.ensure_state_dir()
        lock_path = state / "write.lock"
        fh = open(lock_path, "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise IndexLockedError(
                    f"Another kb process (pid {holder}) is writing the index of {self.workspace.root}. "
                    "Wait for it to finish (or stop it) and try again."
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    # --- verbs --------------------------------------------------------------------------------------------
    def index(self, progress: Progress | None = None) -> IndexReport:
        """Bring the index up to date with the files (incremental; see :mod:`kb.indexer`)."""
        with self._write_lock():
            manifest = self._manifest_rw()
            fp = fingerprint(self.embedder.model_id, self.settings)
            store = self._store_for(fp)
            repaired: list[str] = []
            if isinstance(store, ChromaStore):
                try:
                    store.count()
                except IndexCorruptError as exc:
                    moved = quarantine(store.path)
                    repaired.append(f"vector index could not be opened ({exc}); moved to {moved.name} and rebuilt")
                    store.close()
            report = Indexer(self.workspace.root, self.settings, manifest, store, self.embedder, progress).run()
            report.repaired = repaired + report.repaired
            if isinstance(store, ChromaStore):
                store.drop_other_collections()
            return report

    def _ready(self) -> tuple[Manifest, Store]:
        manifest = self._manifest_ro()
        fp = manifest.get_meta("fingerprint")
        if fp is None:
            raise EmptyIndexError(f"Nothing is indexed in {self.workspace.root} yet. Run: kb index")
        current = fingerprint(self.embedder.model_id, self.settings)
        if current != fp:
            raise EmptyIndexError(
                "The index was built with other settings (embedding model or chunking) than the current ones. "
                "Run: kb index (it rebuilds automatically)."
            )
        return manifest, self._store_for(fp)

    def search(self, query: str, k: int = 10, *, where: dict[str, Any] | None = None) -> list[Hit]:
        """The ``k`` chunks most relevant to ``query``, best first."""
        query = _clean_query(query)
        manifest, store = self._ready()
        vector = self.embedder.embed([query])[0]
        return self._hits(manifest, store.query(vector, max(k * 2, k + 5), where), k)

    def _hits(self, manifest: Manifest, scored: list[tuple[str, float]], k: int) -> list[Hit]:
        rows = manifest.chunks_by_id([i for i, _ in scored])  # only ids the manifest knows are real
        sources = manifest.sources([r.path for r in rows.values()]) if rows else {}
        hits: list[Hit] = []
        for cid, score in scored:
            row = rows.get(cid)
            if row is None:
                continue
            src = sources.get(row.path)
            meta = src.metadata if src else {}
            hits.append(
                Hit(
                    rank=len(hits) + 1,
                    score=round(score, 4),
                    path=row.path,
                    start_line=row.start_line,
                    end_line=row.end_line,
                    heading=row.heading,
                    text=row.text,
                    source_type=src.source_type if src else "other",
                    chunk_id=cid,
                    title=src.title if src else None,
                    url=meta.get("url") if isinstance(meta.get("url"), str) else None,
                    page=row.page,
                )
            )
            if len(hits) >= k:
                break
        return hits

    def ask(self, question: str, *, persona: str | None = None, k: int | None = None) -> Answer:
        """A grounded answer to ``question`` with verbatim, line-exact citations (or an abstention)."""
        question = _clean_query(question)
        chosen = self.persona(persona or self.settings.persona) if (persona or self.settings.persona) else None
        k = k or self.settings.top_k
        manifest, store = self._ready()
        aspects = chosen.always_consider if chosen else []
        vectors = self.embedder.embed([question, *self._aspect_texts(chosen)])
        fetch = max(k * 2, k + 5)
        hits = self._hits(manifest, store.query(vectors[0], fetch), k)
        evidence = Evidence(question, hits)
        # The persona's priorities decide what further evidence is looked for: the question, steered towards
        # each priority.
        for aspect, vec in zip(aspects, vectors[1:]):
            steered = vectors[0] + vec
            steered /= max(float((steered @ steered) ** 0.5), 1e-12)
            evidence.aspects[aspect.label] = self._hits(manifest, store.query(steered, 8), 3)
            evidence.aspect_vectors[aspect.label] = vec
        return self.answerer.answer(evidence, chosen)

    def _aspect_texts(self, persona: Persona | None) -> list[str]:
        """Each "What I Always Consider" priority, enriched with the persona's closest expertise/principle lines."""
        if persona is None or not persona.always_consider:
            return []
        aspects = persona.always_consider
        lore = persona.lore()
        base = [f"{a.label}: {a.description}" for a in aspects]
        if not lore:
            return base
        vecs = self.embedder.embed(base + lore)
        av, lv = vecs[: len(base)], vecs[len(base) :]
        out = []
        for i, text in enumerate(base):
            best = (lv @ av[i]).argsort()[::-1][:2]
            out.append(text + " " + " ".join(lore[j] for j in best))
        return out

    def persona(self, name: str) -> Persona:
        return get_persona(name, self.workspace.personas_dir)

    def personas(self) -> list[PersonaInfo]:
        return [p.info() for p in list_personas(self.workspace.personas_dir)]

    def status(self) -> Status:
        path = self.workspace.state_dir / "manifest.sqlite3"
        model = self.settings.embedder
        if not path.exists():
            return Status(str(self.workspace.root), str(self.workspace.state_dir), model,
                          self.settings.embedder_runtime, None, 0, 0, None, [])
        manifest = self._manifest_ro()
        counts = manifest.chunk_counts()
        sources = [
            SourceStatus(s.path, s.content_hash, counts.get(s.path, 0), s.indexed_at, s.source_type)
            for s in sorted(manifest.sources().values(), key=lambda s: s.path)
        ]
        last = manifest.get_meta("last_indexed_at")
        return Status(
            workspace=str(self.workspace.root),
            index_dir=str(self.workspace.state_dir),
            model=manifest.get_meta("model_id") or model,
            embedder_runtime=self.settings.embedder_runtime,
            fingerprint=manifest.get_meta("fingerprint"),
            sources_count=len(sources),
            chunks_count=sum(counts.values()),
            last_indexed_at=float(last) if last else None,
            sources=sources,
        )

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
        if isinstance(self._store, ChromaStore):
            self._store.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clean_query(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        from kb.errors import KbError

        raise KbError("The question is empty. Ask something, e.g.: kb ask \"Who owns the notifications service?\"")
    if len(text) > 4000:
        text = text[:4000]
    return text
