"""The library: ``KnowledgeBase`` does everything; the CLI is a thin client of it."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kb.answer import Answerer, Evidence, ExtractiveAnswerer
from kb.embedders import Embedder, make_embedder
from kb.errors import ConfigError, EmptyIndexError, IndexCorruptError, IndexLockedError
from kb.evaluate import QuestionsReport, evaluate_questions
from kb.indexer import Indexer, Progress, collection_name, fingerprint
from kb.llm_answer import OnToken, extractive_sentences, llm_answerer
from kb.manifest import Manifest
from kb.models import (
    Answer,
    Hit,
    IndexReport,
    PersonaInfo,
    ResourceFetchReport,
    ResourceInfo,
    SourceStatus,
    Status,
)
from kb.personas import Persona, get_persona, list_personas
from kb.remote import last_watcher, routed
from kb.retrieval import Filters, Reranker, Scored, near_duplicate, rerank, retrieve, word_set
from kb.settings import Settings, load_settings
from kb.store import ChromaStore, Store, quarantine
from kb.workspace import Workspace, find_workspace

log = logging.getLogger(__name__)


class KnowledgeBase:
    """A workspace's knowledge base.

    >>> kb = KnowledgeBase.open("data")            # doctest: +SKIP
    >>> kb.index().chunks_embedded                  # doctest: +SKIP
    >>> kb.ask("How should we paginate the notifications API?", persona="backend-engineer")  # doctest: +SKIP

    Backends are injected (``embedder``, ``store``, ``answerer``, ``reranker``); ``None`` builds them from settings.
    """

    def __init__(
        self,
        workspace: Workspace,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        store: Store | None = None,
        answerer: Answerer | None = None,
        reranker: Reranker | None = None,
    ):
        self.workspace = workspace
        self.settings = settings
        self._embedder = embedder
        self._store = store
        self._answerer = answerer
        self._reranker = reranker
        self._manifest: Manifest | None = None
        self._generators: dict[str, Any] = {}  # LLM backends by spec (kb.llm_answer)
        self._picker: Any = None  # kb.persona_pick.PersonaPicker, built on the first persona="auto"
        self._locked = False  # this instance holds the write lock (kb watch holds it for its lifetime)
        # When a `kb watch` process owns this index, search/ask/status/index are sent to it (kb.remote): Chroma
        # does not support two processes on one folder. kb watch's own instances set this to False.
        self.route_to_watcher = True

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> KnowledgeBase:
        """Open the workspace at ``path`` (or find it: ``KB_WORKSPACE``, then the current folder and its parents).

        Keyword arguments override settings (``top_k=8``) or inject backends (``embedder=...``).
        """
        backends = {k: overrides.pop(k) for k in ("embedder", "store", "answerer", "reranker") if k in overrides}
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
            # Sentence vectors are cached like persona lines: the same sentence is never embedded twice.
            self._answerer = ExtractiveAnswerer(self._embed_cached, self.settings.min_relevance)
        return self._answerer

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        if self._locked:  # re-entered by the holder (kb watch runs index() while holding it)
            yield
            return
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
            self._locked = True
            yield
        finally:
            self._locked = False
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    # --- verbs --------------------------------------------------------------------------------------------
    @routed
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

    @routed
    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> list[Hit]:
        """The ``k`` chunks most relevant to ``query``, best first.

        ``mode``: ``hybrid`` (default: BM25 and dense vectors fused), ``dense`` or ``bm25``. ``source_type``
        (context, prd, resource, other) and ``path`` (shell globs on the workspace-relative path) filter.
        """
        query = _clean_query(query)
        mode = mode or self.settings.search_mode
        filters = Filters.make(source_type, path)
        manifest, store = self._ready()
        vector = self.embedder.embed([query])[0] if mode != "bm25" else None
        scored = self._rerank(manifest, query, retrieve(manifest, store, query, vector, k, mode, filters), k)
        return self._hits(manifest, scored, k)

    @property
    def reranker(self) -> Reranker | None:
        if self._reranker is None and self.settings.reranker:
            from kb.embedders import make_reranker

            self._reranker = make_reranker(self.settings.reranker)
        return self._reranker

    def _rerank(self, manifest: Manifest, query: str, scored: list[Scored], k: int) -> list[Scored]:
        return rerank(self.reranker, manifest, query, scored, k) if self.reranker else scored

    def _hits(self, manifest: Manifest, scored: list[Scored], k: int, fold: bool = True) -> list[Hit]:
        hits: list[Hit] = []
        words: list[frozenset[str]] = []
        window = max(2 * k, 10)
        for start in range(0, len(scored), window):  # read rows a window at a time: usually one is enough
            if len(hits) >= k:
                break
            self._add_hits(manifest, scored[start : start + window], k, fold, hits, words)
        return hits

    def _add_hits(
        self, manifest: Manifest, scored: list[Scored], k: int, fold: bool, hits: list[Hit],
        words: list[frozenset[str]],
    ) -> None:
        rows = manifest.chunks_by_id([s.chunk_id for s in scored])  # only ids the manifest knows are real
        sources = manifest.sources([r.path for r in rows.values()]) if rows else {}
        for item in scored:
            row = rows.get(item.chunk_id)
            if row is None:
                continue
            ws = word_set(row.text) if fold else frozenset()
            if fold:  # the same text in two places (a copied section, a vendored file): show it once
                twin = next((h for h, w in zip(hits, words) if near_duplicate(w, ws)), None)
                if twin is not None:
                    if row.path != twin.path and row.path not in twin.also_in:
                        twin.also_in.append(row.path)
                    continue
            src = sources.get(row.path)
            meta = src.metadata if src else {}
            words.append(ws)
            hits.append(
                Hit(
                    rank=len(hits) + 1,
                    score=round(item.score, 4),
                    path=row.path,
                    start_line=row.start_line,
                    end_line=row.end_line,
                    heading=row.heading,
                    text=row.text,
                    source_type=src.source_type if src else "other",
                    chunk_id=item.chunk_id,
                    title=src.title if src else None,
                    url=meta.get("url") if isinstance(meta.get("url"), str) else None,
                    page=row.page,
                )
            )
            if len(hits) >= k:
                break

    @routed
    def ask(
        self,
        question: str,
        *,
        persona: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
        llm: str | None = None,
        on_token: OnToken | None = None,
    ) -> Answer:
        """A grounded answer to ``question`` with verbatim, line-exact citations (or an abstention).

        ``mode``, ``source_type`` and ``path`` choose and filter the evidence as in :meth:`search`.
        ``persona="auto"``: kb.toml's ``persona`` if set, else the persona that best fits the question
        (``answer.persona_picked``).
        ``llm`` names the answer backend (default: settings ``llm``, "extractive"; see :mod:`kb.llm`);
        a model's tokens go to ``on_token`` as they arrive, and its answer is verified before it is returned.
        """
        question = _clean_query(question)
        mode = mode or self.settings.search_mode
        filters = Filters.make(source_type, path)
        qvec = self.embedder.embed([question])[0]
        chosen, picked = self._choose_persona(qvec, persona or self.settings.persona)
        k = k or self.settings.top_k
        manifest, store = self._ready()
        aspects = chosen.always_consider if chosen else []
        aspect_vectors = self._embed_cached(self._aspect_texts(chosen))
        scored = retrieve(manifest, store, question, qvec, k, mode, filters)
        hits = self._hits(manifest, self._rerank(manifest, question, scored, k), k)
        evidence = Evidence(question, hits)
        # The persona's priorities decide what further evidence is looked for: the question, steered towards
        # each priority.
        for aspect, vec in zip(aspects, aspect_vectors):
            steered = qvec + vec
            steered /= max(float((steered @ steered) ** 0.5), 1e-12)
            evidence.aspects[aspect.label] = self._hits(
                manifest, retrieve(manifest, store, question, steered, 8, "dense", filters, candidates=8), 3
            )
            evidence.aspect_vectors[aspect.label] = vec
        spec = llm or (self.settings.llm if self._answerer is None else "extractive")
        answerer = llm_answerer(spec, self.settings, self.embedder.embed, self._generators, on_token)
        answer = (answerer or self.answerer).answer(evidence, chosen)
        answer.persona_picked = picked
        answer.sentences = answer.sentences or extractive_sentences(answer)
        return answer

    def _choose_persona(self, question_vector: np.ndarray, name: str | None) -> tuple[Persona | None, bool]:
        """``"auto"``: the kb.toml persona when one is set, else the persona that best fits the question."""
        fixed = self.settings.persona
        if name and name.strip().lower() == "auto" and fixed and fixed.strip().lower() != "auto":
            name = fixed
        if not name or name.strip().lower() != "auto":
            return (self.persona(name) if name else None), False
        from kb.persona_pick import PersonaPicker

        if self._picker is None:
            self._picker = PersonaPicker(list_personas(self.workspace.personas_dir), self._embed_cached)
        pick = self._picker.pick(question_vector)
        return (pick.persona, True) if pick else (None, False)

    def _embed_cached(self, texts: Sequence[str]) -> np.ndarray:
        """Embed persona lines and evidence sentences through a cache in the manifest (``aux_vectors``): a one-shot
        `kb ask` embeds only sentences no earlier question has drawn on."""
        from kb.indexer import text_hash

        if not texts:
            return self.embedder.embed([])
        manifest, model = self._manifest_ro(), self.embedder.model_id
        hashes = [text_hash(t) for t in texts]
        have = manifest.get_aux_vectors(model, hashes)
        todo = [(h, t) for h, t in dict(zip(hashes, texts)).items() if h not in have]
        if todo:
            fresh = self.embedder.embed([t for _, t in todo])
            with contextlib.suppress(sqlite3.OperationalError):  # a read-only or busy manifest: just don't cache
                manifest.put_aux_vectors(model, zip([h for h, _ in todo], fresh))
            have.update({h: v for (h, _), v in zip(todo, fresh)})
        return np.stack([have[h] for h in hashes])

    def _aspect_texts(self, persona: Persona | None) -> list[str]:
        """Each "What I Always Consider" priority, enriched with the persona's closest expertise/principle lines."""
        if persona is None or not persona.always_consider:
            return []
        aspects = persona.always_consider
        lore = persona.lore()
        base = [f"{a.label}: {a.description}" for a in aspects]
        if not lore:
            return base
        vecs = self._embed_cached(base + lore)
        av, lv = vecs[: len(base)], vecs[len(base) :]
        out = []
        for i, text in enumerate(base):
            best = (lv @ av[i]).argsort()[::-1][:2]
            out.append(text + " " + " ".join(lore[j] for j in best))
        return out

    def as_retriever(self, k: int = 10, **filters: Any) -> Any:
        """This knowledge base as a llama-index retriever (see :mod:`kb.integrations`)."""
        from kb.integrations import KbRetriever

        return KbRetriever(self, k, **filters)

    def evaluate(self, questions: str | os.PathLike[str], *, k: int = 5, mode: str | None = None) -> QuestionsReport:
        """hit@1, hit@k and MRR of :meth:`search` on a JSONL of ``{"question", "expected": [path or path#heading]}``.

        For BEIR-format datasets see :func:`kb.evaluate.evaluate_beir` (``kb eval DATASET_DIR``).
        """
        return evaluate_questions(self, questions, k=k, mode=mode)

    def persona(self, name: str) -> Persona:
        return get_persona(name, self.workspace.personas_dir)

    def personas(self) -> list[PersonaInfo]:
        return [p.info() for p in list_personas(self.workspace.personas_dir)]

    @routed
    def status(self) -> Status:
        path = self.workspace.state_dir / "manifest.sqlite3"
        model = self.settings.embedder
        if not path.exists():
            return Status(str(self.workspace.root), str(self.workspace.state_dir), model,
                          self.settings.embedder_runtime, None, 0, 0, None, [], last_watcher(self.workspace))
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
            watcher=last_watcher(self.workspace),
        )

    def watch(self, **options: Any) -> None:
        """Keep the index equal to the files until Ctrl-C or SIGTERM, serving search/ask/status to other
        processes meanwhile. Options: see :class:`kb.watch.Watcher`."""
        from kb.watch import watch

        watch(self, **options)

    # --- recommended resources (logic in kb.resources) -----------------------------------------------------
    def resources(self) -> list[ResourceInfo]:
        """The personas' recommended resources with their status (see :mod:`kb.resources`)."""
        from kb.resources import list_resources

        return list_resources(self)

    def fetch_resources(
        self, urls: Sequence[str] | None = None, force: bool = False, progress: Progress | None = None
    ) -> ResourceFetchReport:
        """Fetch the due resources (or ``urls``) into ``.workos/resources/``, then index them."""
        from kb.resources import fetch_resources

        return fetch_resources(self, list(urls) if urls else None, force=force, progress=progress)

    def import_resource(self, directory: str | os.PathLike[str], url: str) -> ResourceFetchReport:
        """Store the local copy in ``directory`` as resource ``url`` (air-gapped use), then index it."""
        from kb.resources import import_resource

        return import_resource(self, directory, url)

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
