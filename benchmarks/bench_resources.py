#!/usr/bin/env python
"""Resource fetching benchmark: fetch + index of the four recommended resource sets from a local HTTP server.

Measures, in ONE run (see benchmarks/README.md):

* the wall of ``KnowledgeBase.fetch_resources()`` (HTTP fetch of every page through the SSRF-guarded
  fetcher, conversion, writing ``.workos/resources/``, then ``index()``) in a fresh workspace whose kb.toml
  maps the backend engineer's resource URLs to a real HTTP server on 127.0.0.1 (:class:`kb.testing.WebMirror`)
  serving ``../shared/resources``; vs. the time sentence-transformers alone needs to encode the same chunk
  texts (the distinct ``embed_text``s of the manifest, ``SentenceTransformer(...).encode(texts,
  batch_size=32)``, as bench_index.py does), measured in the same run after every kb measurement, so that an
  embedding slowdown in kb moves only the kb side (bound: ratio <= 1.25);
* re-fetches with nothing changed (every resource named, so every page is re-requested with If-None-Match /
  If-Modified-Since): bound 0 chunks embedded, and the server's answers are counted (304s);
* a plain ``fetch_resources()`` right after (copies are fresh: nothing requested at all).

Usage:  python benchmarks/bench_resources.py [--corpus PATH] [--runs N] [--keep]

Prints a markdown table on stdout, progress on stderr, and writes benchmarks/results/bench_resources.json.
Exits 0 when it ran (even if a bound FAILs), 0 with SKIP when the corpus is absent, non-zero only on errors.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import CORPUS, info, logger, offline, print_table, scratch, verdict, write_results

from kb.testing import WebMirror

MAX_WALL_VS_EMBED = 1.25
SETS = {
    "https://github.com/donnemartin/system-design-primer": "system-design-primer",
    "https://owasp.org/www-project-top-ten/": "owasp-top10-2021",
    "https://12factor.net/": "twelve-factor",
    "https://cloud.google.com/apis/design": "google-aip",
}
log = logger("bench_resources")


def kb_toml(base: str) -> str:
    mirrors = "\n".join(f'"{u}" = "{base}/res/{f}/"' for u, f in SETS.items())
    return (
        '[resources]\npersonas = ["backend-engineer"]\nallow_hosts = ["127.0.0.1"]\n'
        f"[resources.mirror]\n{mirrors}\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--runs", type=int, default=3, help="re-fetches with nothing changed")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not all((args.corpus / f).is_dir() for f in SETS.values()):
        print(f"SKIP: the offline resource copies are not in {args.corpus}")
        return 0
    offline()
    from index_phases import phase_st, read_manifest  # the ST yardstick of bench_index.py

    from kb import KnowledgeBase

    load_start = os.getloadavg()
    with scratch("kb-bench-resources-", args.keep, log) as tmp, WebMirror({"/res/": args.corpus}) as srv:
        cache, base = tmp / "model-cache", srv.base
        warm = tmp / "warm"
        (warm / ".workos/context").mkdir(parents=True)
        (warm / ".workos/context/a.md").write_text("# Warm-up\n\nExports the model to ONNX once.\n")
        log("one-time ONNX export (not timed) ...")
        t = time.perf_counter()
        with KnowledgeBase.open(warm, model_cache_dir=cache) as kb:
            kb.index()
        export_s = time.perf_counter() - t

        ws = tmp / "ws"
        (ws / ".workos").mkdir(parents=True)
        (ws / "kb.toml").write_text(kb_toml(base))
        log("fetch + index of the four resource sets (timed) ...")
        t = time.perf_counter()
        with KnowledgeBase.open(ws, model_cache_dir=cache) as kb:
            report = kb.fetch_resources()
        wall = time.perf_counter() - t
        assert report.index is not None
        outcomes = {o.url: o.to_dict() for o in report.resources}
        failed = [u for u in SETS if outcomes[u]["status"] != "fetched"]
        if failed:
            raise SystemExit(f"error: resources not fetched: {failed}: {[outcomes[u] for u in failed]}")
        pages = sum(o["pages_written"] for o in outcomes.values())
        downloaded = sum(o["bytes_downloaded"] for o in outcomes.values())
        first_requests = len(srv.statuses)

        man = read_manifest(ws)
        hashes = list(man["distinct"])
        texts = [man["distinct"][h] for h in hashes]

        refetch: list[dict[str, Any]] = []
        for run in range(args.runs):
            before = len(srv.statuses)
            t = time.perf_counter()
            with KnowledgeBase.open(ws, model_cache_dir=cache) as kb:
                again = kb.fetch_resources(list(SETS))
            answers = srv.statuses[before:]
            assert again.index is not None
            refetch.append(
                {
                    "seconds": time.perf_counter() - t,
                    "chunks_embedded": again.index.chunks_embedded,
                    "requests": len(answers),
                    "not_modified": answers.count(304),
                    "statuses": sorted(set(answers)),
                    "outcomes": sorted({o.status for o in again.resources}),
                }
            )
            log(f"re-fetch {run + 1}: {refetch[-1]}")
        before = len(srv.statuses)
        with KnowledgeBase.open(ws, model_cache_dir=cache) as kb:
            plain = kb.fetch_resources()
        plain_requests = len(srv.statuses) - before
        assert plain.index is not None
        # torch is imported only now, after every kb measurement, so it cannot disturb them.
        st = phase_st(texts, hashes, man["vectors"])

    embed_s = st["encode_s"]
    ratio = wall / embed_s
    fetch_part = report.seconds - report.index.seconds
    rows = [
        info("Resource sets / pages written / bytes downloaded", f"4 / {pages} / {downloaded:,} B"),
        info("HTTP requests (first fetch)", f"{first_requests}"),
        info("Chunks embedded (distinct texts)", f"{report.index.chunks_embedded} ({len(texts)})"),
        info("One-time ONNX export (excluded)", f"{export_s:.1f} s"),
        info(
            "Fetch + index wall",
            f"{wall:.1f} s (fetch+write {fetch_part:.1f} s, index {report.index.seconds:.1f} s)",
        ),
        info(
            "sentence-transformers encode, same texts",
            f"{embed_s:.1f} s ({st['texts_per_s']:.1f} texts/s, {st['torch_threads']} threads)",
        ),
        info(
            "ST import / model load + warm-up (excluded)",
            f"{st['import_s']:.1f} s / {st['load_and_warmup_s']:.1f} s",
        ),
        info("Largest |kb vector − ST vector|", f"{st['max_abs_diff_vs_kb']}"),
        (
            "Fetch + index / ST encode",
            f"{ratio:.3f}×",
            f"≤ {MAX_WALL_VS_EMBED}×",
            verdict(ratio <= MAX_WALL_VS_EMBED),
        ),
        (
            "Re-fetch, nothing changed: chunks embedded",
            ", ".join(str(r["chunks_embedded"]) for r in refetch),
            "0",
            verdict(all(r["chunks_embedded"] == 0 for r in refetch)),
        ),
        info(
            "Re-fetch: 304 answers / requests",
            ", ".join(f"{r['not_modified']}/{r['requests']}" for r in refetch),
        ),
        info("Re-fetch wall (median)", f"{statistics.median(r['seconds'] for r in refetch):.2f} s"),
        info(
            "Plain fetch of fresh copies: requests / embedded",
            f"{plain_requests} / {plain.index.chunks_embedded}",
        ),
    ]
    passed = all(r[3] != "**FAIL**" for r in rows)
    print_table(("metric", "measured", "bound", "result"), rows)
    print("\nRESULT: " + ("PASS" if passed else "FAIL (see the rows marked FAIL)"))
    write_results(
        "bench_resources",
        {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "all_passed": passed,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": {"start": load_start, "end": os.getloadavg()},
            "corpus": str(args.corpus),
            "pages_written": pages,
            "bytes_downloaded": downloaded,
            "first_fetch_requests": first_requests,
            "chunks_embedded": report.index.chunks_embedded,
            "distinct_texts": len(texts),
            "onnx_export_seconds": export_s,
            "fetch_index_wall_seconds": wall,
            "fetch_write_seconds": fetch_part,
            "index_seconds": report.index.seconds,
            "embed_seconds": embed_s,
            "embed_reference": "sentence-transformers encode of the distinct embed_texts, batch_size=32",
            "st": st,
            "ratio": ratio,
            "bound_ratio": MAX_WALL_VS_EMBED,
            "refetch": refetch,
            "plain_fetch_requests": plain_requests,
            "outcomes": outcomes,
        },
        indent=1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
