"""Search and ask over an :class:`kb.index.engine.IndexEngine`: retrieval, folding, persona steering,
answering.

``kb ask`` flows: question → :func:`kb.answer.retrieval.retrieve` (hybrid) → optional rerank → hits (rows read
from the manifest, near-duplicates folded) → per persona priority, a steered dense search → :class:`Evidence`
→ the answerer named by ``llm`` (extractive, or a language model whose answer is verified) → :class:`Answer`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from kb.answer.answerers import make_answerer
from kb.answer.compose import entities
from kb.answer.evidence import Evidence
from kb.answer.fresh import CurrentLines
from kb.answer.priors import TEAM_TYPES
from kb.answer.retrieval import Filters, Scored, near_duplicate, rerank, retrieve, word_set
from kb.backends.llm import Generator
from kb.backends.rerank import Reranker, make_reranker
from kb.errors import KbError
from kb.index.engine import IndexEngine
from kb.index.manifest import Manifest
from kb.models import Answer, Hit, OnToken
from kb.personas import Persona, get_persona, list_personas

MAX_QUERY_CHARS = 4000
#: Hits retrieved from the team's own sources (context files, PRDs) besides the question's top k.
TEAM_HITS = 6
_OWNS = re.compile(r"\bown", re.I)  # a context file "I use" for who owns what: the team directory
READ_TRIES = 3  # a search is read again (at most this often) when a writer committed while it ran


class Query:
    """The read side of an index: :meth:`search` and :meth:`ask`.

    ``generator`` (a :class:`kb.backends.llm.Generator`, e.g. any llama-index LLM wrapped in
    :class:`kb.backends.llm.LlamaIndexGenerator`) writes answers when given; ``reranker`` adds a second stage.
    """

    def __init__(
        self, engine: IndexEngine, *, generator: Generator | None = None, reranker: Reranker | None = None
    ):
        self.engine = engine
        self.settings = engine.settings
        self.generator = generator
        self._reranker = reranker
        self._generators: dict[str, Generator] = {}  # LLM backends by spec, built once
        self._picker: Any = None  # kb.answer.persona_pick.PersonaPicker, built on the first persona="auto"

    def over(self, engine: IndexEngine) -> Query:
        """The same query backends over another engine (``kb watch`` answers on a reader of its index)."""
        return Query(engine, generator=self.generator, reranker=self._reranker)

    @property
    def reranker(self) -> Reranker | None:
        if self._reranker is None and self.settings.reranker:
            self._reranker = make_reranker(self.settings.reranker)
        return self._reranker

    # --- search -------------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> list[Hit]:
        query = clean_query(query)
        mode = mode or self.settings.search_mode
        filters = Filters.make(source_type, path)
        self.engine.ready()
        vector = self.engine.embedder.embed([query])[0] if mode != "bm25" else None
        embed = self.engine.embed_cached
        for _ in range(READ_TRIES):  # read again if a writer committed meanwhile: one state, never a mix
            with self.engine.snapshot() as (manifest, store, seq):
                scored = retrieve(manifest, store, query, vector, k, mode, filters, embed=embed)
                hits = hits_of(manifest, self._rerank(manifest, query, scored, k), k)
            if not self.engine.committed_since(seq):
                break
        return hits

    def _rerank(self, manifest: Manifest, query: str, scored: list[Scored], k: int) -> list[Scored]:
        reranker = self.reranker
        return rerank(reranker, manifest, query, scored, k) if reranker else scored

    # --- ask ----------------------------------------------------------------------------------------------
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
        stale: Collection[str] = (),
    ) -> Answer:
        """A grounded answer; ``stale``: indexed sources that changed on disk since they were indexed (their
        quotes are checked against the file as it is now, :mod:`kb.answer.fresh`)."""
        evidence, chosen, picked = self.evidence(
            question, persona=persona, k=k, mode=mode, source_type=source_type, path=path, stale=stale
        )
        answerer = make_answerer(  # llm None: the injected generator, else the `llm` setting
            llm,
            self.settings,
            self.engine.embedder.embed,
            self.engine.embed_cached,
            injected=self.generator,
            cache=self._generators,
            on_token=on_token,
        )
        answer = answerer.answer(evidence, chosen)
        answer.persona_picked = picked
        return answer

    def evidence(
        self,
        question: str,
        *,
        persona: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
        stale: Collection[str] = (),
    ) -> tuple[Evidence, Persona | None, bool]:
        """What an answerer gets for ``question``: the hits; the team's own hits (context files and PRDs,
        retrieved on their own so resources cannot crowd them out); per persona priority, the question steered
        towards it; the team directory's hits on a service the question names. Also the persona and whether
        kb picked it."""
        question = clean_query(question)
        mode = mode or self.settings.search_mode
        filters = Filters.make(source_type, path)
        qvec = self.engine.embedder.embed([question])[0]
        chosen, picked = self.choose_persona(qvec, persona or self.settings.persona)
        k = k or self.settings.top_k
        self.engine.ready()
        embed = self.engine.embed_cached
        reads_first = [f for f, _ in chosen.context_files] if chosen else []
        aspects = chosen.always_consider if chosen else []
        aspect_vectors = embed(self._aspect_texts(chosen))
        team = Filters.make(
            [t for t in TEAM_TYPES if not filters.source_types or t in filters.source_types], path
        )
        directory = [f for f, why in (chosen.context_files if chosen else []) if _OWNS.search(why)]
        for _ in range(READ_TRIES):  # read again if a writer committed meanwhile: one state, never a mix
            with self.engine.snapshot() as (manifest, store, seq):
                evidence = self._gather(
                    manifest, store, question, qvec, k, mode, filters, team, directory, reads_first
                )
                # The persona's priorities decide what further evidence is looked for: the question, steered
                # towards each priority.
                for aspect, vec in zip(aspects, aspect_vectors, strict=True):
                    steered = qvec + vec
                    steered /= max(float((steered @ steered) ** 0.5), 1e-12)
                    found = retrieve(
                        manifest, store, question, steered, 8, "dense", filters, candidates=8, priors=False
                    )
                    evidence.aspects[aspect.label] = hits_of(manifest, found, 3)
                    evidence.aspect_vectors[aspect.label] = vec
            if not self.engine.committed_since(seq):
                break
        evidence.still_there = CurrentLines(
            self.engine.workspace.root, stale, int(self.settings.max_file_mb * 1024 * 1024)
        )
        return evidence, chosen, picked

    def _gather(
        self,
        manifest: Manifest,
        store: Any,
        question: str,
        qvec: np.ndarray,
        k: int,
        mode: str,
        filters: Filters,
        team: Filters,
        directory: list[str],
        reads_first: list[str],
    ) -> Evidence:
        """The question's hits, the team's own hits (whole sections) and the team directory's hits on a
        service the question names, from one state of the index."""
        embed = self.engine.embed_cached

        def hits(query: str, vec: np.ndarray, n: int, flt: Filters, rerank: bool = False) -> list[Hit]:
            found = retrieve(manifest, store, query, vec, n, mode, flt, embed=embed, boost=reads_first)
            return hits_of(manifest, self._rerank(manifest, query, found, n) if rerank else found, n)

        evidence = Evidence(question, hits(question, qvec, k, filters, rerank=True))
        if team.source_types:
            evidence.team = whole_sections(manifest, hits(question, qvec, TEAM_HITS, team))
        searched = bool(team.source_types) and (not team.paths or bool(team.allowed_paths(manifest)))
        evidence.team_searched = searched
        evidence.entities = entities(question)
        if evidence.entities and directory:
            query = f"{question} {' '.join(evidence.entities)} owner"
            evidence.owners = hits(query, qvec, 3, Filters.make(None, directory))
        return evidence

    def persona(self, name: str) -> Persona:
        return get_persona(name, self.engine.workspace.personas_dir)

    def choose_persona(self, question_vector: np.ndarray, name: str | None) -> tuple[Persona | None, bool]:
        """``"auto"``: the kb.toml persona when one is set, else the persona that best fits the question."""
        fixed = self.settings.persona
        if name and name.strip().lower() == "auto" and fixed and fixed.strip().lower() != "auto":
            name = fixed
        if not name or name.strip().lower() != "auto":
            return (self.persona(name) if name else None), False
        from kb.answer.persona_pick import PersonaPicker

        if self._picker is None:
            self._picker = PersonaPicker(
                list_personas(self.engine.workspace.personas_dir), self.engine.embed_cached
            )
        pick = self._picker.pick(question_vector)
        return (pick.persona, True) if pick else (None, False)

    def _aspect_texts(self, persona: Persona | None) -> list[str]:
        """Each "What I Always Consider" priority, enriched with the persona's closest expertise/principle
        lines."""
        if persona is None or not persona.always_consider:
            return []
        base = [f"{a.label}: {a.description}" for a in persona.always_consider]
        lore = persona.lore()
        if not lore:
            return base
        vecs = self.engine.embed_cached(base + lore)
        av, lv = vecs[: len(base)], vecs[len(base) :]
        out = []
        for i, text in enumerate(base):
            best = (lv @ av[i]).argsort()[::-1][:2]
            out.append(text + " " + " ".join(lore[j] for j in best))
        return out


def clean_query(text: str) -> str:
    """Whitespace folded, at most :data:`MAX_QUERY_CHARS`; an empty question is an error."""
    text = " ".join(text.split())
    if not text:
        raise KbError(
            'The question is empty. Ask something, e.g.: kb ask "Who owns the notifications service?"'
        )
    return text[:MAX_QUERY_CHARS]


def whole_sections(manifest: Manifest, hits: list[Hit]) -> list[Hit]:
    """``hits``, each followed by the other chunks of its section (a team's section is its answer: an answer
    quotes it whole, not the one chunk that matched), with the hit's score."""
    out: list[Hit] = []
    seen = {h.chunk_id for h in hits}
    files: dict[str, list[Any]] = {}
    for h in hits:
        out.append(h)
        if h.path not in files:
            files[h.path] = manifest.chunks_of(h.path)
        for row in files[h.path]:
            if row.heading == h.heading and row.id not in seen:
                seen.add(row.id)
                out.append(
                    replace(
                        h, chunk_id=row.id, start_line=row.start_line, end_line=row.end_line, text=row.text
                    )
                )
    return out


def hits_of(manifest: Manifest, scored: list[Scored], k: int, fold: bool = True) -> list[Hit]:
    """The first ``k`` scored chunks as hits (rows read from the manifest a window at a time; near-duplicate
    texts folded into the better one's ``also_in``)."""
    hits: list[Hit] = []
    words: list[frozenset[str]] = []
    window = max(2 * k, 10)
    for start in range(0, len(scored), window):
        if len(hits) >= k:
            break
        _add_hits(manifest, scored[start : start + window], k, fold, hits, words)
    return hits


def _add_hits(
    manifest: Manifest, scored: list[Scored], k: int, fold: bool, hits: list[Hit], words: list[frozenset[str]]
) -> None:
    rows = manifest.chunks_by_id([s.chunk_id for s in scored])  # only ids the manifest knows are real
    sources = manifest.sources([r.path for r in rows.values()]) if rows else {}
    for item in scored:
        row = rows.get(item.chunk_id)
        if row is None:
            continue
        ws = word_set(row.text) if fold else frozenset()
        if fold:  # the same text in two places (a copied section, a vendored file): show it once
            twin = next((h for h, w in zip(hits, words, strict=True) if near_duplicate(w, ws)), None)
            if twin is not None:
                if row.path != twin.path and row.path not in twin.also_in:
                    twin.also_in.append(row.path)
                continue
        src = sources.get(row.path)
        meta = src.metadata if src else {}
        url = meta.get("url")
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
                url=url if isinstance(url, str) else None,
                page=row.page,
            )
        )
        if len(hits) >= k:
            break
