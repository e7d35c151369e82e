"""Hybrid retrieval: dense vectors (Chroma) and BM25 (FTS5 in the manifest), fused; metadata filters; folding.

Fusion is a convex combination of the two scores on absolute scales: cosine as it is, BM25 divided by
:func:`kb.index.lexical.max_score` (the score a passage matching every query term would get). That keeps how
*much* better one chunk is than another (rank fusion, RRF, throws it away) without min-max normalisation's
flaw: a lone weak match in a small workspace would become a perfect score. The weight and candidate depth
were chosen on the SciFact train split only, with 2-fold cross-validation inside it
(``benchmarks/tune_fusion.py``); the test split was never looked at.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from kb.answer.priors import Embed, apply_priors
from kb.backends.rerank import Reranker
from kb.backends.store import Store
from kb.errors import KbError
from kb.index.lexical import coverage, max_score
from kb.index.manifest import Manifest

Mode = Literal["hybrid", "dense", "bm25"]
MODES: tuple[str, ...] = ("hybrid", "dense", "bm25")
SOURCE_TYPES: tuple[str, ...] = ("context", "prd", "resource", "other")

#: Weight of the dense score in the fusion (the rest is BM25's). Tuned on SciFact train (see the module
#: docstring).
DENSE_WEIGHT = 0.5
#: Dense candidates, and lexical sections, each side contributes before fusion (sections expand to at
#: most twice as many chunks).
CANDIDATES = 200


@dataclass(frozen=True)
class Filters:
    """Metadata filters: keep chunks whose source type is one of ``source_types`` and whose path matches one
    of ``paths`` (shell globs on the workspace-relative path, ``*`` crossing folders). Empty means no
    constraint."""

    source_types: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    @classmethod
    def make(
        cls, source_type: str | Sequence[str] | None = None, path: str | Sequence[str] | None = None
    ) -> Filters:
        types = (source_type,) if isinstance(source_type, str) else tuple(source_type or ())
        globs = (path,) if isinstance(path, str) else tuple(path or ())
        types = tuple(t.strip() for part in types for t in part.split(",") if t.strip())
        for t in types:
            if t not in SOURCE_TYPES:
                raise KbError(f"Unknown source type {t!r}. Use one of: {', '.join(SOURCE_TYPES)}.")
        return cls(types, tuple(_relative(g) for g in globs if g.strip()))

    def __bool__(self) -> bool:
        return bool(self.source_types or self.paths)

    def allowed_paths(self, manifest: Manifest) -> list[str]:
        out = []
        for path, source_type in manifest.source_types().items():
            if self.source_types and source_type not in self.source_types:
                continue
            if self.paths and not any(fnmatch.fnmatchcase(path, g) for g in self.paths):
                continue
            out.append(path)
        return sorted(out)


def _relative(glob: str) -> str:
    """A path glob as the workspace-relative paths are written: a leading ``./`` dropped (``.workos/...``
    keeps its dot)."""
    glob = glob.strip()
    while glob.startswith("./"):
        glob = glob[2:]
    return glob or "*"


@dataclass
class Scored:
    chunk_id: str
    score: float
    dense: float | None = None
    lexical: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def fuse(
    dense: Sequence[tuple[str, float]],
    lexical: Sequence[tuple[str, float]],
    lexical_max: float,
    weight: float = DENSE_WEIGHT,
) -> list[Scored]:
    """``weight * cosine + (1 - weight) * bm25 / lexical_max``, best first (see the module docstring)."""
    raw_d, raw_l = dict(dense), dict(lexical)
    floor = min(raw_d.values(), default=0.0)
    top = lexical_max if lexical_max > 0 else max(raw_l.values(), default=1.0) or 1.0
    out = [
        Scored(
            cid,
            weight * raw_d.get(cid, floor) + (1 - weight) * raw_l.get(cid, 0.0) / top,
            raw_d.get(cid),
            raw_l.get(cid),
        )
        for cid in dict.fromkeys([*raw_d, *raw_l])
    ]
    out.sort(key=lambda s: -s.score)
    return out


def retrieve(
    manifest: Manifest,
    store: Store,
    query: str,
    vector: np.ndarray | None,
    k: int,
    mode: str = "hybrid",
    filters: Filters | None = None,
    candidates: int = CANDIDATES,
    weight: float = DENSE_WEIGHT,
    *,
    embed: Embed | None = None,
    boost: Sequence[str] = (),
    priors: bool = True,
) -> list[Scored]:
    """The best ``k``-ish candidates (more than ``k``: callers drop rows and fold duplicates), best first.

    ``priors`` (:mod:`kb.answer.priors`): team sections whose heading names the topic (needs ``embed``, the
    cached embedder), the files in ``boost`` (a persona's context files), no file crowding out the others.
    """
    if mode not in MODES:
        raise KbError(f"Unknown retrieval mode {mode!r}. Use one of: {', '.join(MODES)}.")
    allowed: list[str] | None = None
    if filters:
        allowed = filters.allowed_paths(manifest)
        if not allowed:
            return []
    depth = max(candidates, k * 2, k + 5) if mode == "hybrid" else max(k * 2, k + 5)
    dense: list[tuple[str, float]] = []
    lexical: list[tuple[str, float]] = []
    if mode in ("hybrid", "dense"):
        if vector is None:
            raise ValueError("dense retrieval needs the query vector")
        where = {"path": {"$in": allowed}} if allowed is not None else None
        dense = store.query(vector, depth, where)
    if mode in ("hybrid", "bm25"):
        lexical = manifest.lexical_query(query, 2 * depth, allowed, sections=depth)
    window = max(3 * k, PRIOR_WINDOW)
    if mode == "dense":
        scored = [Scored(c, s, dense=s) for c, s in dense]
    else:
        weights = manifest.lexical_weights(query)
        top = max_score(weights) or 1.0
        if mode == "bm25":
            scored = [Scored(c, s / top, lexical=s) for c, s in lexical]
        else:
            scored = fuse(dense, lexical, top, weight)
        scored = within_sections(
            manifest, scored, weights, top, max(3 * k, 30), 1.0 if mode == "bm25" else 1 - weight
        )
    if not priors:
        return scored
    return apply_priors(manifest, scored, window, vector=vector, embed=embed, boost=boost)


def within_sections(
    manifest: Manifest, scored: list[Scored], weights: dict[str, float], top: float, window: int, share: float
) -> list[Scored]:
    """Order the chunks of one section by their own term matches.

    Every chunk of a section carries the section's BM25 score, so among the top ``window`` candidates a chunk
    that covers less of the query's IDF weight than its best sibling loses that fraction of its (normalised,
    ``/ top``) lexical score, scaled by the lexical ``share`` of the fusion. The best-covering chunk of each
    section keeps its score; single-chunk sections are untouched. (Looking up ``INC-2024-031`` lands on that
    incident's line, not on its neighbour in the same list.)
    """
    head = [s for s in scored[:window] if s.lexical]
    if not head or not weights:
        return scored
    rows = manifest.chunks_by_id([s.chunk_id for s in head])
    cov: dict[str, float] = {}
    best: dict[tuple[str, str], float] = {}
    for s in head:
        row = rows.get(s.chunk_id)
        if row is not None:
            cov[s.chunk_id] = coverage(weights, row.text)
            key = (row.path, row.heading)
            best[key] = max(best.get(key, 0.0), cov[s.chunk_id])
    for s in head:
        row = rows.get(s.chunk_id)
        if row is not None and best[(row.path, row.heading)] > 0:
            gap = (best[(row.path, row.heading)] - cov[s.chunk_id]) / best[(row.path, row.heading)]
            s.score -= share * gap * (s.lexical or 0.0) / top
    return sorted(scored[:window], key=lambda x: -x.score) + scored[window:]


#: How many of the best candidates the priors (kb.answer.priors) re-score (at least 3 k).
PRIOR_WINDOW = 100

#: How many fused candidates a reranker sees (at least ``k``).
RERANK_DEPTH = 30


def rerank(reranker: Reranker, manifest: Manifest, query: str, scored: list[Scored], k: int) -> list[Scored]:
    """Re-order the top fused candidates by the reranker's scores; the rest keep their order behind them."""
    head, tail = scored[: max(k, RERANK_DEPTH)], scored[max(k, RERANK_DEPTH) :]
    rows = manifest.chunks_by_id([s.chunk_id for s in head])
    head = [s for s in head if s.chunk_id in rows]
    if not head:
        return tail
    new = list(reranker.score(query, [rows[s.chunk_id].text for s in head]))
    if len(new) != len(head):
        raise KbError(f"The reranker returned {len(new)} scores for {len(head)} passages.")
    for s, value in zip(head, new, strict=True):
        s.extra["fused"] = s.score
        s.score = float(value)
    return sorted(head, key=lambda s: -s.score) + tail


_TOKEN = re.compile(r"\w+")


def word_set(text: str) -> frozenset[str]:
    return frozenset(_TOKEN.findall(text.lower()))


def near_duplicate(a: str | frozenset[str], b: str | frozenset[str], threshold: float = 0.9) -> bool:
    """Whether two chunk texts (or their :func:`word_set`) say the same thing: Jaccard similarity of their
    word sets ≥ ``threshold``."""
    sa = a if isinstance(a, frozenset) else word_set(a)
    sb = b if isinstance(b, frozenset) else word_set(b)
    if not sa or not sb:
        return sa == sb and (isinstance(a, frozenset) or str(a).strip() == str(b).strip())
    small, large = sorted((len(sa), len(sb)))
    if small < threshold * large:  # Jaccard ≤ |small| / |large|: cannot reach the threshold
        return False
    return len(sa & sb) / len(sa | sb) >= threshold
