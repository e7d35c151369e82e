"""Choose kb's fusion parameters on the SciFact TRAIN split only, with 2-fold cross-validation inside it.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tune_fusion.py [--dataset ../shared/bench/scifact]

Indexes the dataset with kb (or reuses kb eval's cached index), collects each query's dense and BM25
candidates once, then scores fusion variants offline. Queries are split into two folds by a hash of their id;
a variant is chosen on one fold and reported on the other, so the printed held-out figures say how well the
choice generalises. The test split is never read. Writes benchmarks/results/tune_fusion.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import PROJECT as ROOT
from common import read_jsonl

from kb.evaluate import evaluate_beir, ndcg_at, read_qrels

DEPTH = 200


def rrf(
    dense: list[tuple[str, float]], lexical: list[tuple[str, float]], k: float, w: float
) -> dict[str, float]:
    out: dict[str, float] = {}
    for weight, lst in ((w, dense), (1 - w, lexical)):
        for rank, (cid, _) in enumerate(lst):
            out[cid] = out.get(cid, 0.0) + weight / (k + rank + 1)
    return out


def norm(lst: list[tuple[str, float]], how: str) -> dict[str, float]:
    if not lst:
        return {}
    vals = [s for _, s in lst]
    if how == "minmax":
        hi, lo = max(vals), min(vals)
        span = (hi - lo) or 1.0
        return {c: (s - lo) / span for c, s in lst}
    if how == "max":
        hi = max(vals) or 1.0
        return {c: s / hi for c, s in lst}
    if how == "z":
        mean = sum(vals) / len(vals)
        sd = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5 or 1.0
        return {c: (s - mean) / sd for c, s in lst}
    raise ValueError(how)


def convex(
    dense: list[tuple[str, float]], lexical: list[tuple[str, float]], how: str, w: float
) -> dict[str, float]:
    dn, ln = norm(dense, how), norm(lexical, how)
    floor_d = min(dn.values(), default=0.0) if how == "z" else 0.0
    floor_l = min(ln.values(), default=0.0) if how == "z" else 0.0
    return {c: w * dn.get(c, floor_d) + (1 - w) * ln.get(c, floor_l) for c in {*dn, *ln}}


def absolute(
    dense: list[tuple[str, float]], lexical: list[tuple[str, float]], tmax: float, w: float
) -> dict[str, float]:
    """kb's fusion (kb.answer.retrieval.fuse), re-implemented on the cached lists."""
    from kb.answer.retrieval import fuse

    return {s.chunk_id: s.score for s in fuse(dense, lexical, tmax, w)}


def top_n(n: int, fuse: Any, *args: Any, tmax: bool = False) -> Any:
    """``fuse`` over the top ``n`` dense and ``2n`` lexical candidates (``tmax``: and the BM25 maximum)."""

    def fused(d: list[tuple[str, float]], lx: list[tuple[str, float]], m: float) -> dict[str, float]:
        return fuse(d[:n], lx[: 2 * n], *((m,) if tmax else ()), *args)

    return fused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "bench" / "scifact"))
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    dataset = Path(args.dataset)
    if not (dataset / "qrels" / "train.tsv").is_file():
        sys.exit(f"skip: {dataset} has no train split (the SciFact copy lives in ../shared/bench/scifact)")

    # Index (or reuse the cache) through kb eval itself, then reopen that index to pull raw candidate lists.
    report = evaluate_beir(dataset, split="train", modes=("dense",), cache_dir=args.cache_dir, limit=1)[0]
    from kb.answer.retrieval import retrieve
    from kb.api import KnowledgeBase
    from kb.index import lexical

    qrels = read_qrels(dataset / "qrels" / "train.tsv")
    queries = {
        str(q["_id"]): q["text"] for q in read_jsonl(dataset / "queries.jsonl") if str(q["_id"]) in qrels
    }
    mapping = json.loads((Path(report.index_dir) / "docs.json").read_text())
    runs: dict[str, tuple[list[tuple[str, float]], list[tuple[str, float]]]] = {}
    tmax: dict[str, float] = {}
    with KnowledgeBase.open(report.index_dir, model_cache_dir=Path(report.index_dir).parent / "models") as kb:
        manifest, store = kb.engine.ready()
        qids = sorted(queries)
        vectors = kb.embedder.embed([queries[q] for q in qids])
        for qid, vec in zip(qids, vectors, strict=True):
            d = retrieve(manifest, store, queries[qid], vec, DEPTH, "dense", candidates=DEPTH)
            # dense retrieve() fetches max(2k, k+5) candidates: keep the top DEPTH
            lx = manifest.lexical_query(queries[qid], 2 * DEPTH, None, sections=DEPTH)
            runs[qid] = ([(s.chunk_id, s.score) for s in d][:DEPTH], lx)
            tmax[qid] = lexical.max_score(manifest.lexical_weights(queries[qid])) or 1.0
        ids = {c for a, b in runs.values() for c, _ in [*a, *b]}
        path_of = {cid: r.path for cid, r in manifest.chunks_by_id(sorted(ids)).items()}

    def score(qs: list[str], fuse: Any) -> float:
        total = 0.0
        for q in qs:
            d, lx = runs[q]
            scores = fuse(d, lx, tmax[q])
            ranked = list(
                dict.fromkeys(mapping[path_of[c]] for c in sorted(scores, key=lambda c: -scores[c]))
            )
            total += ndcg_at(ranked, qrels[q], 10)
        return total / len(qs)

    variants: dict[str, Any] = {
        "dense": lambda d, lx, m: dict(d),
        "bm25 (sections)": lambda d, lx, m: dict(lx),
    }
    for n in (100, 200):
        for w in (0.3, 0.4, 0.5, 0.6, 0.7):
            # absolute scales: raw cosine, BM25 over its theoretical maximum for the query (kb's fusion)
            variants[f"abs w={w} n={n}"] = top_n(n, absolute, w, tmax=True)
            for how in ("minmax", "z"):
                variants[f"{how} w={w} n={n}"] = top_n(n, convex, how, w)
        for k in (10, 60):
            variants[f"rrf k={k} n={n}"] = top_n(n, rrf, k, 0.5)

    folds = [[q for q in qids if int(hashlib.sha1(q.encode()).hexdigest(), 16) % 2 == f] for f in (0, 1)]
    started = time.perf_counter()
    table = {
        name: [score(folds[0], fn), score(folds[1], fn), score(qids, fn)] for name, fn in variants.items()
    }
    cv = []
    for pick_on, report_on in ((0, 1), (1, 0)):
        best = max(
            (n for n in table if n != "dense" and not n.startswith("bm25")), key=lambda n: table[n][pick_on]
        )
        cv.append(
            {"chosen_on_fold": pick_on, "variant": best, "held_out_ndcg@10": round(table[best][report_on], 4)}
        )
    ranking = sorted(table.items(), key=lambda kv: -kv[1][2])
    print(f"{'variant':<28} {'fold0':>7} {'fold1':>7} {'train':>7}")
    for name, (a, b, c) in ranking[:12] + [
        (n, table[n]) for n in table if n == "dense" or n.startswith("bm25")
    ]:
        print(f"{name:<28} {a:>7.4f} {b:>7.4f} {c:>7.4f}")
    for c in cv:
        held_out = c["held_out_ndcg@10"]
        print(f"chosen on fold {c['chosen_on_fold']}: {c['variant']}  -> held-out nDCG@10 {held_out}")
    out = ROOT / "benchmarks" / "results" / "tune_fusion.json"
    out.write_text(
        json.dumps(
            {
                "queries": len(qids),
                "cross_validation": cv,
                "variants": {n: [round(x, 4) for x in v] for n, v in ranking},
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
