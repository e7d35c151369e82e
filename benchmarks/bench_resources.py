#!/usr/bin/env python
"""Resource fetching benchmark: fetch + index of the four recommended resource sets from a local HTTP server.

Measures, in ONE run (see benchmarks/README.md):

* the wall of ``KnowledgeBase.fetch_resources()`` (HTTP fetch of every page through the SSRF-guarded fetcher,
  conversion, writing ``.workos/resources/``, then ``index()``) in a fresh workspace whose kb.toml maps the backend
  engineer's resource URLs to a real HTTP server on 127.0.0.1 serving ``../shared/resources``; vs. the time kb's own
  embedder needs to embed the same chunk texts (the distinct ``embed_text``s of the manifest, in the indexer's
  order and batch size), measured in the same run with a warm model (bound: ratio <= 1.25);
* re-fetches with nothing changed (every resource named, so every page is re-requested with If-None-Match /
  If-Modified-Since): bound 0 chunks embedded, and the server's answers are counted (304s);
* a plain ``fetch_resources()`` right after (copies are fresh: nothing requested at all).

Usage:  python benchmarks/bench_resources.py [--corpus PATH] [--runs N] [--keep]

Prints a markdown table on stdout, progress on stderr, and writes benchmarks/results/bench_resources.json.
Exits 0 when it ran (even if a bound FAILs), 0 with SKIP when the corpus is absent, non-zero only on errors.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
DEFAULT_CORPUS = PROJECT.parent / "shared" / "resources"
RESULTS = PROJECT / "benchmarks" / "results" / "bench_resources.json"
MAX_WALL_VS_EMBED = 1.25
SETS = {
    "https://github.com/donnemartin/system-design-primer": "system-design-primer",
    "https://owasp.org/www-project-top-ten/": "owasp-top10-2021",
    "https://12factor.net/": "twelve-factor",
    "https://cloud.google.com/apis/design": "google-aip",
}
TYPES = {".md": "text/markdown; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".html": "text/html"}


def log(msg: str) -> None:
    print(f"[bench_resources] {msg}", file=sys.stderr, flush=True)


class Static(BaseHTTPRequestHandler):
    """A static server like nginx with autoindex: ETag + Last-Modified, 304 on If-None-Match, listings."""

    server: Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = unquote(urlsplit(self.path).path)
        target = (self.server.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.root) or not target.exists():
            return self._send(404, b"not found", "text/plain")
        if target.is_dir():
            items = "".join(
                f'<li><a href="{html.escape(p.name)}{"/" if p.is_dir() else ""}">{html.escape(p.name)}</a></li>'
                for p in sorted(target.iterdir())
            )
            data, ctype = (
                f"<html><head><title>Index of {path}</title></head><body><ul>{items}</ul></body></html>".encode(),
                "text/html",
            )
        else:
            data, ctype = target.read_bytes(), TYPES.get(target.suffix.lower(), "application/octet-stream")
        etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            return self._send(304, b"", None, {"ETag": etag})
        return self._send(
            200, data, ctype, {"ETag": etag, "Last-Modified": formatdate(target.stat().st_mtime, usegmt=True)}
        )

    def _send(self, code: int, body: bytes, ctype: str | None, headers: dict[str, str] | None = None) -> None:
        self.server.statuses.append(code)
        self.send_response(code)
        for k, v in ({"Content-Type": ctype} if ctype else {}).items() | (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), Static)
        self.root = root.resolve()
        self.statuses: list[int] = []


def kb_toml(base: str) -> str:
    mirrors = "\n".join(f'"{u}" = "{base}/{f}/"' for u, f in SETS.items())
    return f'[resources]\npersonas = ["backend-engineer"]\nallow_hosts = ["127.0.0.1"]\n[resources.mirror]\n{mirrors}\n'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--runs", type=int, default=3, help="re-fetches with nothing changed")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not all((args.corpus / f).is_dir() for f in SETS.values()):
        print(f"SKIP: the offline resource copies are not in {args.corpus}")
        return 0
    os.environ["HF_HUB_OFFLINE"] = "1"
    from kb import KnowledgeBase
    from kb.index.indexer import EMBED_BATCH

    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="kb-bench-resources-"))
    cache = tmp / "model-cache"
    srv = Server(args.corpus)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
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

        db = sqlite3.connect(ws / ".workos/.kb/manifest.sqlite3")
        texts = sorted({r[0] for r in db.execute("SELECT embed_text FROM chunks")}, key=len)
        db.close()
        log(f"embedding the same {len(texts)} texts with kb's embedder (timed) ...")
        with KnowledgeBase.open(ws, model_cache_dir=cache) as kb:
            kb.embedder.embed(["warm-up"])
            t = time.perf_counter()
            for i in range(0, len(texts), EMBED_BATCH):
                kb.embedder.embed(texts[i : i + EMBED_BATCH])
            embed_s = time.perf_counter() - t

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
    finally:
        srv.shutdown()
        srv.server_close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")

    ratio = wall / embed_s
    fetch_part = report.seconds - report.index.seconds
    rows = [
        ("Resource sets / pages written / bytes downloaded", f"4 / {pages} / {downloaded:,} B", "—", "info"),
        ("HTTP requests (first fetch)", f"{first_requests}", "—", "info"),
        ("Chunks embedded (distinct texts)", f"{report.index.chunks_embedded} ({len(texts)})", "—", "info"),
        ("One-time ONNX export (excluded)", f"{export_s:.1f} s", "—", "info"),
        (
            "Fetch + index wall",
            f"{wall:.1f} s (fetch+write {fetch_part:.1f} s, index {report.index.seconds:.1f} s)",
            "—",
            "info",
        ),
        (
            "kb embedder, same texts, warm",
            f"{embed_s:.1f} s ({len(texts) / embed_s:.1f} texts/s)",
            "—",
            "info",
        ),
        (
            "Fetch + index / embed",
            f"{ratio:.3f}×",
            f"≤ {MAX_WALL_VS_EMBED}×",
            "PASS" if ratio <= MAX_WALL_VS_EMBED else "**FAIL**",
        ),
        (
            "Re-fetch, nothing changed: chunks embedded",
            ", ".join(str(r["chunks_embedded"]) for r in refetch),
            "0",
            "PASS" if all(r["chunks_embedded"] == 0 for r in refetch) else "**FAIL**",
        ),
        (
            "Re-fetch: 304 answers / requests",
            ", ".join(f"{r['not_modified']}/{r['requests']}" for r in refetch),
            "—",
            "info",
        ),
        ("Re-fetch wall (median)", f"{statistics.median(r['seconds'] for r in refetch):.2f} s", "—", "info"),
        (
            "Plain fetch of fresh copies: requests / embedded",
            f"{plain_requests} / {plain.index.chunks_embedded}",
            "—",
            "info",
        ),
    ]
    passed = all(r[3] != "**FAIL**" for r in rows)
    print("| metric | measured | bound | result |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    print("\nRESULT: " + ("PASS" if passed else "FAIL (see the rows marked FAIL)"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
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
                "ratio": ratio,
                "bound_ratio": MAX_WALL_VS_EMBED,
                "refetch": refetch,
                "plain_fetch_requests": plain_requests,
                "outcomes": outcomes,
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
