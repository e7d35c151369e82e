"""Retrieval evaluation: BEIR-format datasets, and a workspace's own question set.

BEIR: the corpus is written out as one markdown file per document (``# title`` then the text) into an eval
workspace under the cache folder (never inside the dataset, which may be read-only) and indexed by kb's own
ingestion and indexer, so what is measured is what users get. The eval workspace is keyed by the dataset's
identity and the index settings; a second run finds everything indexed and only queries.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kb.answer.query import Query
from kb.errors import DatasetError
from kb.index.engine import IndexEngine
from kb.models import Hit, Progress
from kb.settings import load_settings
from kb.workspace import find_workspace


class Search(Protocol):
    def __call__(self, query: str, k: int = 10, *, mode: str | None = None) -> list[Hit]: ...


@dataclass
class EvalReport:
    """Retrieval quality of one mode on one dataset split."""

    dataset: str
    split: str
    mode: str
    queries: int
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    latency_ms_p50: float
    latency_ms_p95: float
    documents: int = 0
    chunks: int = 0
    index_seconds: float = 0.0
    chunks_embedded: int = 0
    index_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "mode": self.mode,
            "queries": self.queries,
            "ndcg@10": self.ndcg_at_10,
            "recall@100": self.recall_at_100,
            "mrr@10": self.mrr_at_10,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "documents": self.documents,
            "chunks": self.chunks,
            "index_seconds": self.index_seconds,
            "chunks_embedded": self.chunks_embedded,
            "index_dir": self.index_dir,
        }


@dataclass
class QuestionResult:
    question: str
    expected: list[str]
    rank: int | None  # 1-based rank of the first hit matching an expected source, None when missed
    top: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "expected": self.expected, "rank": self.rank, "top": self.top}


@dataclass
class QuestionsReport:
    """How well a workspace answers its team's own questions: hit@k and MRR over the expected sources."""

    questions_file: str
    mode: str
    k: int
    questions: int
    hit_at_1: float
    hit_at_k: float
    mrr: float
    latency_ms_p50: float
    results: list[QuestionResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "questions_file": self.questions_file,
            "mode": self.mode,
            "k": self.k,
            "questions": self.questions,
            "hit@1": self.hit_at_1,
            f"hit@{self.k}": self.hit_at_k,
            "mrr": self.mrr,
            "latency_ms_p50": self.latency_ms_p50,
            "results": [r.to_dict() for r in self.results],
        }


# --- metrics
# --------------------------------------------------------------------------------------------------
def ndcg_at(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gain (as trec_eval / BEIR compute it)."""
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], rels: dict[str, int], k: int = 100) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --- BEIR
# -----------------------------------------------------------------------------------------------------
def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"{path} line {n} is not JSON ({exc.msg}).") from None
    except OSError as exc:
        raise DatasetError(f"Cannot read {path}: {exc.strerror or exc}.") from None


def beir_files(dataset: Path, split: str) -> tuple[Path, Path, Path]:
    if not dataset.is_dir():
        raise DatasetError(
            f"{dataset} is not a folder. A BEIR dataset folder holds corpus.jsonl, queries.jsonl, qrels/."
        )
    corpus = next((dataset / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (dataset / n).is_file()), None)
    queries = dataset / "queries.jsonl"
    qrels = next(
        (p for p in (dataset / "qrels" / f"{split}.tsv", dataset / "qrels.tsv") if p.is_file()), None
    )
    missing = [
        n
        for n, p in (
            ("corpus.jsonl[.gz]", corpus),
            ("queries.jsonl", queries if queries.is_file() else None),
            (f"qrels/{split}.tsv", qrels),
        )
        if p is None
    ]
    if missing:
        splits = (
            sorted(p.stem for p in (dataset / "qrels").glob("*.tsv")) if (dataset / "qrels").is_dir() else []
        )
        hint = (
            f" It has the split(s) {', '.join(splits)}: pass --split {splits[0]}."
            if splits and qrels is None
            else ""
        )
        raise DatasetError(f"{dataset} is not a BEIR dataset: missing {', '.join(missing)}.{hint}")
    assert corpus is not None and qrels is not None
    return corpus, queries, qrels


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or (n == 1 and not parts[2].lstrip("-").isdigit()):
                continue  # header or blank
            try:
                out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
            except ValueError:
                raise DatasetError(f"{path} line {n}: the score {parts[2]!r} is not an integer.") from None
    return out


def _dataset_key(dataset: Path, corpus: Path, index_key: str) -> str:
    st = corpus.stat()
    blob = f"{dataset.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{index_key}"
    return f"{dataset.resolve().name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def materialize(corpus: Path, root: Path) -> dict[str, str]:
    """Write each corpus document as ``docs/NNNNNN.md`` under ``root`` once; return {workspace path: doc
    id}."""
    mapping_file = root / "docs.json"
    if mapping_file.is_file():
        return dict(json.loads(mapping_file.read_text(encoding="utf-8")))
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, str] = {}
    for n, doc in enumerate(_jsonl(corpus)):
        doc_id = str(doc.get("_id", ""))
        if not doc_id:
            raise DatasetError(f"{corpus}: document {n + 1} has no _id.")
        title = " ".join(str(doc.get("title") or "").split())
        text = str(doc.get("text") or "").strip()
        rel = f"docs/{n:07d}.md"
        (root / rel).write_text((f"# {title}\n\n" if title else "") + text + "\n", encoding="utf-8")
        mapping[rel] = doc_id
    tmp = mapping_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(mapping), encoding="utf-8")
    os.replace(tmp, mapping_file)  # written last: its presence means the corpus is complete
    return mapping


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kb"


def evaluate_beir(
    dataset: str | os.PathLike[str],
    *,
    split: str = "test",
    modes: tuple[str, ...] = ("hybrid",),
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    limit: int | None = None,
    **overrides: Any,
) -> list[EvalReport]:
    """Index ``dataset`` (BEIR format) with kb into a cached eval workspace and score each retrieval mode."""
    path = Path(dataset).expanduser()
    corpus, queries_file, qrels_file = beir_files(path, split)
    qrels = read_qrels(qrels_file)
    queries = {
        str(q["_id"]): str(q.get("text", "")) for q in _jsonl(queries_file) if str(q.get("_id")) in qrels
    }
    if not queries:
        raise DatasetError(f"No query of {queries_file} has judgments in {qrels_file}.")
    qids = sorted(queries)[:limit] if limit else sorted(queries)
    settings = load_settings(None, **overrides)
    index_key = json.dumps({"embedder": settings.embedder, "chunk_max_tokens": settings.chunk_max_tokens})
    root = (
        Path(cache_dir or settings.cache_dir or default_cache_dir())
        / "eval"
        / _dataset_key(path, corpus, index_key)
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "kb.toml").write_text('include = ["docs/**"]\n', encoding="utf-8")
    (root / ".workos").mkdir(exist_ok=True)
    if progress:
        progress("prepare", 0, 1)
    mapping = materialize(corpus, root)
    overrides.setdefault("model_cache_dir", settings.model_cache_dir or (root.parent / "models"))
    reports = []
    engine = IndexEngine(find_workspace(root), load_settings(root / "kb.toml", **overrides))
    query = Query(engine)
    try:
        started = time.perf_counter()
        report = engine.index(progress)
        index_seconds = time.perf_counter() - started
        query.search("warm up", k=10)  # loads the model before any query is timed
        for mode in modes:
            ndcg, recall, mrr, lat = [], [], [], []
            for n, qid in enumerate(qids):
                t0 = time.perf_counter()
                hits = query.search(queries[qid], k=100, mode=mode)
                lat.append((time.perf_counter() - t0) * 1000)
                ranked = list(
                    dict.fromkeys(mapping[p] for h in hits for p in (h.path, *h.also_in) if p in mapping)
                )
                ndcg.append(ndcg_at(ranked, qrels[qid], 10))
                recall.append(recall_at(ranked, qrels[qid], 100))
                mrr.append(mrr_at(ranked, qrels[qid], 10))
                if progress and (n % 50 == 0 or n == len(qids) - 1):
                    progress(f"queries ({mode})", n + 1, len(qids))
            reports.append(
                EvalReport(
                    dataset=str(path),
                    split=split,
                    mode=mode,
                    queries=len(qids),
                    ndcg_at_10=round(sum(ndcg) / len(ndcg), 4),
                    recall_at_100=round(sum(recall) / len(recall), 4),
                    mrr_at_10=round(sum(mrr) / len(mrr), 4),
                    latency_ms_p50=round(percentile(lat, 0.5), 2),
                    latency_ms_p95=round(percentile(lat, 0.95), 2),
                    documents=len(mapping),
                    chunks=report.chunks_total,
                    index_seconds=round(index_seconds, 2),
                    chunks_embedded=report.chunks_embedded,
                    index_dir=str(root),
                )
            )
    finally:
        engine.close()
    return reports


def read_questions(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for n, item in enumerate(_jsonl(path), 1):
        q, expected = item.get("question"), item.get("expected", [])
        if not isinstance(q, str) or not q.strip() or not isinstance(expected, list):
            raise DatasetError(
                f'{path} line {n}: expected {{"question": "...", "expected": ["path or path#heading", ...]}}.'
            )
        out.append((q, [str(e) for e in expected]))
    if not out:
        raise DatasetError(f"{path} holds no questions.")
    return out


def _matches(expected: str, path: str, heading: str) -> bool:
    want_path, _, want_heading = expected.partition("#")
    if path != want_path.strip().lstrip("./") and path != want_path.strip():
        return False
    if not want_heading:
        return True
    parts = [p.strip().lower() for p in heading.replace(">", "›").split("›")]
    return want_heading.strip().lower() in parts


def evaluate_questions(
    search: Search, path: str | os.PathLike[str], *, k: int = 5, mode: str
) -> QuestionsReport:
    """hit@1, hit@k and MRR of ``search`` (:meth:`kb.KnowledgeBase.search`) over a JSONL of ``{"question",
    "expected"}`` (unanswerable ones, with ``expected: []``, are not scored here: ``kb ask`` abstention covers
    them)."""
    file = Path(path).expanduser()
    items = [(q, e) for q, e in read_questions(file) if e]
    if not items:
        raise DatasetError(f"{file}: no question lists an expected source.")
    results, lat = [], []
    for question, expected in items:
        t0 = time.perf_counter()
        hits = search(question, k, mode=mode)
        lat.append((time.perf_counter() - t0) * 1000)
        rank = next(
            (i + 1 for i, h in enumerate(hits) if any(_matches(e, h.path, h.heading) for e in expected)), None
        )
        results.append(QuestionResult(question, expected, rank, [f"{h.path}#{h.heading}" for h in hits]))
    n = len(results)
    return QuestionsReport(
        questions_file=str(file),
        mode=mode,
        k=k,
        questions=n,
        hit_at_1=round(sum(r.rank == 1 for r in results) / n, 4),
        hit_at_k=round(sum(r.rank is not None for r in results) / n, 4),
        mrr=round(sum(1 / r.rank for r in results if r.rank) / n, 4),
        latency_ms_p50=round(percentile(lat, 0.5), 2),
        results=results,
    )
