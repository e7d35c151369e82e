#!/usr/bin/env python
"""Store benchmark: the embedded Chroma folder and a Chroma server side by side, in ONE run.

* **eval** — SciFact train (``../shared/bench/scifact``) through ``kb eval``'s own code against each store:
  nDCG@10 must be identical. The corpus is embedded once (the manifest caches the vectors); each store is then
  filled from that cache (``index wall``: the store's own cost) and queried (k=100, warm; p50/p95).
  ``--eval-docs N`` keeps N documents (every document judged for the kept queries, plus others drawn at
  random) and ``--eval-queries Q`` the first Q queries, when the machine is too busy for the whole corpus.
* **scale** — ``--scale 10000,100000,300000`` chunks of generated text (a Zipf vocabulary) with a fast
  stand-in embedder (deterministic random unit vectors, 384 dims), so the store and the lexical side are what
  is measured: index wall, warm hybrid search p50/p95 (k=10) in a fresh reader process, and RSS of that
  process (it holds the vectors of an embedded store) and of the Chroma server. Bound: p95 at the largest
  size ≤ 3× p95 at the smallest, per store.
* **fault** — a ``kb watch`` process (fake embedder) on the server store; ``--edits`` file edits (modify,
  add, delete, rename); the server is killed (SIGKILL) after 30 % of them and restarted after 70 %. Checks:
  no edit lost (the manifest holds exactly the files on disk, by content hash) and the index equals a rebuild
  from scratch (same chunks; the server's collection holds exactly the manifest's ids).

Usage:  python benchmarks/bench_store.py [--parts eval,scale,fault] [--eval-docs 1500] [--eval-queries 300]
        [--model-cache DIR] [--scale 10000,100000] [--queries 200] [--edits 200] [--merge] [--keep]

``--merge`` keeps the parts of the last results file that this run does not measure (run the parts one at a
time on a busy machine; each part records its own start, load average and arguments under ``runs``).

Prints markdown tables on stdout, progress on stderr, writes benchmarks/results/bench_store.json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    PROJECT,
    RESULTS,
    info,
    logger,
    machine,
    offline,
    print_table,
    scratch,
    verdict,
    versions,
    write_results,
)

from kb.testing import Background, wait_for

say = logger("store")
SCIFACT = PROJECT.parent / "shared" / "bench" / "scifact"


# --- a stand-in embedder ------------------------------------------------------------------------------------
class RandomEmbedder:
    """Deterministic random unit vectors (a text's vector depends on its hash only): costs microseconds, so
    the store is what is measured."""

    model_id = "bench-random-unit@384"
    dimensions = 384
    max_tokens = 512

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dimensions)
        return out / np.linalg.norm(out, axis=1, keepdims=True)  # type: ignore[no-any-return]


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# --- the reader process of the scale part -------------------------------------------------------------------
def child_queries(ws: str, n: int) -> None:
    """``--child-queries WS N``: warm hybrid searches in a fresh process; JSON on stdout."""
    from kb import KnowledgeBase

    rng = random.Random(7)
    kb = KnowledgeBase.open(ws, embedder=RandomEmbedder())  # no kb watch runs: answered in this process
    texts = [
        r[0] for r in kb.engine.manifest().db.execute("SELECT text FROM chunks ORDER BY random() LIMIT 400")
    ]
    queries = []
    for t in texts:
        words = t.split()
        start = rng.randrange(max(1, len(words) - 6))
        queries.append(" ".join(words[start : start + 6]))
    for q in queries[:20]:  # warm: the store's index loaded, caches filled
        kb.search(q, k=10)
    # A reader that keeps searching builds BM25's arrays in the background after its
    # first 2 s of searches (kb.index.postings); FTS5 answers until then. Measure the warm state it reaches.
    t0 = time.perf_counter()
    kb.engine.reader().postings.build(wait=True)
    built_s = time.perf_counter() - t0
    for q in queries[:5]:
        kb.search(q, k=10)
    lat = []
    for q in queries[20 : 20 + n]:
        t0 = time.perf_counter()
        kb.search(q, k=10)
        lat.append((time.perf_counter() - t0) * 1000)
    rss, hwm = rss_mb()
    print(
        json.dumps(
            {
                "p50": pct(lat, 0.5),
                "p95": pct(lat, 0.95),
                "n": len(lat),
                "rss_mb": rss,
                "hwm_mb": hwm,
                "bm25_arrays_wait_s": round(built_s, 1),
            }
        )
    )


# --- parts --------------------------------------------------------------------------------------------------
def chroma(base: Path, name: str) -> Any:
    from kb.testing.services import ChromaServer

    return ChromaServer(base / name, base / f"{name}.log")


def subset(scifact: Path, dest: Path, docs: int, queries: int) -> Path:
    """A BEIR folder with the first ``queries`` train queries and ``docs`` documents (theirs first)."""
    qrels: dict[str, dict[str, int]] = {}
    for line in (scifact / "qrels/train.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")[:3]
        qrels.setdefault(q, {})[d] = int(s)
    kept = sorted(qrels)[:queries]
    corpus = [json.loads(x) for x in gzip.open(scifact / "corpus.jsonl.gz", "rt")]
    judged = {d for q in kept for d in qrels[q]}
    rest = [c for c in corpus if c["_id"] not in judged]
    random.Random(5).shuffle(rest)
    chosen = [c for c in corpus if c["_id"] in judged] + rest[: max(0, docs - len(judged))]
    (dest / "qrels").mkdir(parents=True)
    (dest / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chosen))
    wanted = set(kept)
    lines = [
        q for q in (scifact / "queries.jsonl").read_text().splitlines() if json.loads(q)["_id"] in wanted
    ]
    (dest / "queries.jsonl").write_text("\n".join(lines) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q in kept for d, s in qrels[q].items()]
    (dest / "qrels/train.tsv").write_text("\n".join(rows) + "\n")
    return dest


def part_eval(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from kb.backends.store import forget_client
    from kb.evaluate import evaluate_beir

    full = args.eval_docs <= 0
    scifact = args.scifact
    dataset = scifact if full else subset(scifact, tmp / "scifact-subset", args.eval_docs, args.eval_queries)
    cache, models = tmp / "eval-cache", args.model_cache or tmp / "models"
    common: dict[str, Any] = dict(split="train", cache_dir=cache, model_cache_dir=models)
    say(
        f"eval: embedding {'the whole corpus' if full else f'{args.eval_docs} documents'} once "
        "(embedded store)"
    )
    first = evaluate_beir(dataset, **common)[0]
    chroma_dir = Path(first.index_dir) / ".workos/.kb/chroma"
    shutil.rmtree(chroma_dir)  # refill the embedded store from the manifest's cached vectors: its own cost
    forget_client(str(chroma_dir))  # chromadb keeps one client per folder in a process
    say("eval: embedded store, filled from the cached vectors")
    embedded = evaluate_beir(dataset, **common)[0]
    with chroma(tmp, "eval-chroma") as url:
        say(f"eval: server store {url}, filled from the cached vectors")
        server = evaluate_beir(dataset, store={"url": url}, **common)[0]
    rows = {"embedded": embedded.to_dict(), "server": server.to_dict()}
    return {
        "dataset": str(dataset),
        "documents": first.documents,
        "queries": first.queries,
        "chunks": first.chunks,
        "embedding_wall_s": first.index_seconds,
        "first_run_ndcg@10": first.ndcg_at_10,
        "stores": rows,
        "identical_ndcg": embedded.ndcg_at_10 == server.ndcg_at_10 == first.ndcg_at_10,
    }


VOCAB_SYLLABLES = [a + b for a in "bdfgklmnprstvz" for b in ("a", "e", "i", "o", "u", "ai", "ou")]


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(VOCAB_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def generate(ws: Path, chunks: int, rng: random.Random) -> None:
    """``chunks`` sections of ~30 Zipf-distributed words, 100 per file."""
    words = vocabulary(30000, rng)
    weights = [1 / (r + 1) for r in range(len(words))]
    (ws / ".workos").mkdir(parents=True)
    folder = ws / "projects/prds/gen"
    folder.mkdir(parents=True)
    per_file = 100
    for f in range(0, chunks, per_file):
        picks = rng.choices(words, weights, k=30 * per_file)
        parts = [f"# Generated {f // per_file}\n"]
        for j in range(min(per_file, chunks - f)):
            parts.append(f"## Section {j}\n\n{' '.join(picks[30 * j : 30 * j + 30])}.\n")
        (folder / f"g{f // per_file:05d}.md").write_text("\n".join(parts))


def reader(ws: Path, n: int, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child-queries", str(ws), str(n)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"reader failed: {done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def part_scale(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from kb import KnowledgeBase

    sizes = [int(x) for x in args.scale.split(",") if x]
    out: dict[str, Any] = {}
    server = chroma(tmp, "scale-chroma")
    server.start()
    try:
        for n in sizes:
            ws = tmp / f"scale-{n}"
            say(f"scale {n}: generating")
            generate(ws, n, random.Random(n))
            row: dict[str, Any] = {}
            for store in ("embedded", "server"):
                env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
                if store == "server":
                    env["KB_CHROMA_URL"] = server.url
                    os.environ["KB_CHROMA_URL"] = server.url
                else:
                    os.environ.pop("KB_CHROMA_URL", None)
                say(f"scale {n}: indexing into the {store} store")
                t0 = time.perf_counter()
                with KnowledgeBase.open(ws, embedder=RandomEmbedder()) as kb:
                    report = kb.index()
                wall = time.perf_counter() - t0
                say(
                    f"scale {n}: {report.chunks_total} chunks, {wall:.1f} s; searching "
                    f"({args.queries} queries)"
                )
                found = reader(ws, args.queries, env)
                found.update(index_wall_s=round(wall, 1), chunks=report.chunks_total)
                if store == "server":
                    assert server.pid is not None
                    found["server_rss_mb"], found["server_hwm_mb"] = rss_mb(server.pid)
                row[store] = found
                say(
                    f"scale {n} {store}: p50 {found['p50']:.1f} ms, p95 {found['p95']:.1f} ms, "
                    f"RSS {found['rss_mb']:.0f} MB"
                )
            os.environ.pop("KB_CHROMA_URL", None)
            out[str(n)] = row
            shutil.rmtree(ws / ".workos/.kb/chroma", ignore_errors=True)  # disk: the next size is bigger
    finally:
        server.stop()
    return out


def part_fault(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from kb import KnowledgeBase
    from kb.testing import READY, FakeEmbedder
    from kb.testing.services import fake_kb_command

    rng = random.Random(11)
    ws = tmp / "fault-ws"
    (ws / ".workos/context").mkdir(parents=True)
    folder = ws / "projects/prds"
    folder.mkdir(parents=True)
    words = vocabulary(2000, rng)
    for i in range(60):
        (folder / f"f{i:03d}.md").write_text(
            f"# File {i}\n\n## Part\n\n{' '.join(rng.choices(words, k=40))}.\n"
        )
    server = chroma(tmp, "fault-chroma")
    url = server.start()
    os.environ["KB_CHROMA_URL"] = url
    watcher = Background(fake_kb_command("watch", ws), tmp / "fault-watch.log", env={"KB_CHROMA_URL": url})
    watcher.wait_for_line(READY, timeout=300)
    edits, kill_at, back_at = args.edits, int(args.edits * 0.3), int(args.edits * 0.7)
    pending_max, killed_at, restarted_at = 0, 0.0, 0.0
    try:
        for e in range(edits):
            if e == kill_at:
                server.kill()
                killed_at = time.time()
                say(f"fault: server killed after {e} edits")
            if e == back_at:
                server.start()
                restarted_at = time.time()
                say(f"fault: server restarted after {e} edits")
            files = sorted(folder.glob("*.md"))
            action = rng.choice(["modify", "modify", "add", "delete", "rename"])
            if action == "modify" or len(files) < 20:
                f = rng.choice(files)
                f.write_text(f.read_text() + f"\n## Edit {e}\n\n{' '.join(rng.choices(words, k=20))}.\n")
            elif action == "add":
                (folder / f"new{e:04d}.md").write_text(
                    f"# New {e}\n\n{' '.join(rng.choices(words, k=40))}.\n"
                )
            elif action == "delete":
                rng.choice(files).unlink()
            else:
                victim = rng.choice(files)
                victim.rename(folder / f"r{e:04d}-{victim.name}")
            time.sleep(0.05)
            if e % 10 == 0:
                with KnowledgeBase.open(ws) as kb:  # routed to the watcher: its own status
                    w = kb.status().watcher
                pending_max = max(pending_max, w.pending if w else 0)

        def caught_up() -> bool:
            with KnowledgeBase.open(ws) as kb:
                st = kb.status()
            w = st.watcher
            if w is None or w.pending or w.store_down_since:
                return False
            disk = {
                f"projects/prds/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
                for p in folder.glob("*.md")
            }
            return {s.path: s.content_hash for s in st.sources} == disk

        t0 = time.time()
        wait_for(caught_up, 300, every=0.5)
        caught = time.time() - t0
    finally:
        watcher.stop(signal.SIGTERM)
    say("fault: comparing with a rebuild from scratch")
    with KnowledgeBase.open(ws, embedder=FakeEmbedder()) as kb:
        manifest_ids = kb.engine.manifest().all_chunk_ids()
        server_ids = kb.engine.store.ids()
        chunks = {(r.path, r.start_line, r.end_line, r.text) for r in kb.engine.manifest().iter_chunks()}
        sources = {s.path: s.content_hash for s in kb.status().sources}
    server.stop()
    os.environ.pop("KB_CHROMA_URL", None)
    fresh = tmp / "fault-rebuild"
    shutil.copytree(ws, fresh, ignore=shutil.ignore_patterns(".kb"))
    with KnowledgeBase.open(fresh, embedder=FakeEmbedder()) as kb:
        kb.index()
        fresh_chunks = {
            (r.path, r.start_line, r.end_line, r.text) for r in kb.engine.manifest().iter_chunks()
        }
    disk = {
        f"projects/prds/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.md")
    }
    lost = sorted(set(disk.items()) ^ set(sources.items()))
    return {
        "edits": edits,
        "edits_while_down": back_at - kill_at,
        "down_s": round(restarted_at - killed_at, 1),
        "pending_max_seen": pending_max,
        "caught_up_after_last_edit_s": round(caught, 1),
        "files": len(disk),
        "lost": lost,
        "server_ids_equal_manifest": server_ids == manifest_ids,
        "equals_rebuild": chunks == fresh_chunks,
        "chunks": len(chunks),
    }


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The rows of every part in ``results`` (this run's, and earlier runs' kept with ``--merge``)."""
    rows: list[tuple[str, str, str, str]] = []
    if ev := results.get("eval"):
        e, s = ev["stores"]["embedded"], ev["stores"]["server"]
        what = f"SciFact train, {ev['documents']} docs / {ev['queries']} queries / {ev['chunks']} chunks"
        rows.append(info("eval corpus", what))
        rows.append(info("embedding once (embedded run, excluded below)", f"{ev['embedding_wall_s']:.1f} s"))
        rows.append(
            (
                "nDCG@10 embedded / server",
                f"{e['ndcg@10']:.4f} / {s['ndcg@10']:.4f}",
                "identical",
                verdict(ev["identical_ndcg"]),
            )
        )
        rows.append(
            info(
                "index wall from cached vectors, embedded / server",
                f"{e['index_seconds']:.1f} s / {s['index_seconds']:.1f} s",
            )
        )
        for q in ("p50", "p95"):
            rows.append(
                info(
                    f"search k=100 {q}, embedded / server",
                    f"{e[f'latency_ms_{q}']:.1f} / {s[f'latency_ms_{q}']:.1f} ms",
                )
            )
    if sc := results.get("scale"):
        sizes = sorted((n for n in sc if n.isdigit()), key=int)
        for n in sizes:
            for store in ("embedded", "server"):
                r = sc[n][store]
                extra = f", server RSS {r['server_rss_mb']:.0f} MB" if "server_rss_mb" in r else ""
                rows.append(
                    info(
                        f"{int(n):,} chunks, {store}: index / p50 / p95 / reader RSS",
                        f"{r['index_wall_s']} s / {r['p50']:.1f} ms / {r['p95']:.1f} ms / "
                        f"{r['rss_mb']:.0f} MB{extra}",
                    )
                )
        if len(sizes) > 1:
            for store in ("embedded", "server"):
                ratio = sc[sizes[-1]][store]["p95"] / sc[sizes[0]][store]["p95"]
                rows.append(
                    (
                        f"{store}: p95 at {int(sizes[-1]):,} / p95 at {int(sizes[0]):,}",
                        f"{ratio:.2f}×",
                        "≤ 3×",
                        verdict(ratio <= 3),
                    )
                )
    if ft := results.get("fault"):
        rows.append(
            info(
                "fault run",
                f"{ft['edits']} edits, {ft['edits_while_down']} while the server was down "
                f"({ft['down_s']} s); pending up to {ft['pending_max_seen']}; caught up "
                f"{ft['caught_up_after_last_edit_s']} s after the last edit",
            )
        )
        rows.append(("edits lost", str(len(ft["lost"])), "0", verdict(not ft["lost"])))
        ok = ft["equals_rebuild"] and ft["server_ids_equal_manifest"]
        rows.append(
            (
                "index == rebuild from scratch; server ids == manifest ids",
                f"{ft['equals_rebuild']}; {ft['server_ids_equal_manifest']} ({ft['chunks']} chunks)",
                "both",
                verdict(ok),
            )
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="eval,scale,fault")
    ap.add_argument("--scifact", type=Path, default=SCIFACT, help="the BEIR SciFact folder")
    ap.add_argument("--eval-docs", type=int, default=1500, help="0: the whole corpus")
    ap.add_argument("--eval-queries", type=int, default=300)
    ap.add_argument(
        "--model-cache", type=Path, help="reuse an ONNX export of the model (default: a fresh one)"
    )
    ap.add_argument("--scale", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--merge", action="store_true", help="keep the other parts of the last results file")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child-queries", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_queries:
        child_queries(args.child_queries[0], int(args.child_queries[1]))
        return 0
    offline(drop_kb_settings=True, log=say)
    parts = set(args.parts.split(","))
    previous = RESULTS / "bench_store.json"
    results: dict[str, Any] = json.loads(previous.read_text()) if args.merge and previous.exists() else {}
    results.update(machine=machine(), versions=versions())
    runs = results.setdefault("runs", {})
    run = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items() if k != "child_queries"},
    }
    with scratch("kb-bench-store-", args.keep, say) as tmp:
        if "eval" in parts and not (args.scifact / "corpus.jsonl.gz").is_file():
            print(f"SKIP: eval: no SciFact at {args.scifact} (--scifact PATH)")
        elif "eval" in parts:
            results["eval"] = part_eval(tmp, args)
            runs["eval"] = run
        if "scale" in parts:
            results["scale"] = {**results.get("scale", {}), **part_scale(tmp, args)}  # sizes of earlier runs
            runs["scale"] = run
        if "fault" in parts:
            results["fault"] = part_fault(tmp, args)
            runs["fault"] = run
    run["loadavg_end"] = os.getloadavg()
    rows = results["rows"] = table(results)
    results["all_passed"] = all(r[3] != "**FAIL**" for r in rows)
    print_table(("metric", "measured", "bound", "result"), rows)
    print(
        f"\nRESULT: {'PASS' if results['all_passed'] else 'FAIL'}  "
        f"(load average {run['loadavg_start']} -> {run['loadavg_end']}; parts of earlier runs: "
        f"{sorted(set(runs) - parts) or 'none'})"
    )
    say(f"wrote {write_results('bench_store', results)}")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    sys.exit(main())
