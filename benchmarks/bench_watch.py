#!/usr/bin/env python
"""kb watch benchmark: freshness, deletes, client latency while it runs, idle cost.

In ONE run, in a temporary workspace holding the resources corpus (copied into
``<tmp>/ws/.workos/resources/``, never into the project) plus ``--files`` generated markdown files:

* index it (``kb index``), then start ``kb watch`` as a separate process;
* **freshness**: ``--edits`` times, append a sentence with a new unique word to a generated file (a normal
  save), then run ``kb search WORD --json`` from other processes back to back until a hit contains the word;
  the latency is from the end of the save to the end of the first ``kb search`` that returns it (so it
  includes one or two whole CLI runs). Meanwhile a thread asks the watcher's socket every 20 ms
  (kb.serve.client, no process start): the time until the word is searchable at all. Bounds: p50 <= 1 s,
  p95 <= 2 s;
* **deletes**: delete each edited file, and time until ``kb search WORD`` no longer returns it (same
  bounds);
* **client wall**: median wall of ``kb search --json`` and ``kb ask --json`` (other processes, answered by
  the watcher) vs. the wall of ``python -c "import sentence_transformers"`` measured in the same run. Bound:
  ratio <= 0.05. A run counts only if it succeeded (search: exit 0 with hits; ask: exit 0 or 3 with an
  answer) and the watcher answered it (its ``served`` count in ``kb status --json`` rose by one per run);
  anything else stops the benchmark with an error, so a command that fails fast cannot pass the bound;
* **idle**: the watcher's CPU time over ``--idle`` seconds with nothing changing (bound: <= 1 % of one
  core), and its RSS.

Usage:  python benchmarks/bench_watch.py [--files 1000] [--edits 50] [--idle 60] [--runs 7] [--keep]

Prints a markdown table on stdout, progress on stderr, writes benchmarks/results/bench_watch.json. Exits 0
when the benchmark ran (a failed bound is printed as FAIL), 0 with SKIP when the corpus is absent, non-zero
on errors."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import string
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import CORPUS, logger, offline, scratch, write_results

from kb.testing import kb_command, kb_watch, run_kb

QUERY = "How should I handle pagination for large datasets?"
WORDS = (
    "service queue retry budget latency owner export cursor page ledger billing tenant quota alert "
    "dashboard migration schema index cache token session audit rollout canary"
).split()
say = logger()


def kb(*args: str, ws: Path, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return run_kb(*args, "--workspace", ws, timeout=timeout)


def wall(cmd: list[str], ok: Any, what: str) -> float:
    """Seconds ``cmd`` took; an error unless ``ok(result)``: a command that fails fast must not count."""
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t
    if not ok(r):
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
    return elapsed


def search_ok(r: subprocess.CompletedProcess[str]) -> bool:
    return r.returncode == 0 and bool(json.loads(r.stdout)["hits"])


def ask_ok(r: subprocess.CompletedProcess[str]) -> bool:
    """Answered (0) or abstained (3), with the answer's JSON."""
    return r.returncode in (0, 3) and bool(json.loads(r.stdout)["answer"])


def served_count(ws: Path) -> int:
    """Requests the watcher has answered for other processes (``kb status --json``, itself one of them)."""
    r = kb("status", "--json", ws=ws, timeout=60)
    watcher = json.loads(r.stdout)["watcher"] if r.returncode == 0 else None
    if not watcher or not watcher["running"]:
        raise RuntimeError(f"kb watch is not answering: {r.stderr or r.stdout}")
    return int(watcher["served"])


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def generate(ws: Path, n: int, rng: random.Random) -> list[Path]:
    out = []
    folder = ws / "projects" / "prds" / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(40))
        p = folder / f"note-{i:04d}.md"
        p.write_text(f"# Note {i}\n\n## Summary\n\n{body.capitalize()}.\n")
        out.append(p)
    return out


def unique_word(rng: random.Random) -> str:
    return "zq" + "".join(rng.choice(string.ascii_lowercase) for _ in range(10))


def returned(ws: Path, word: str) -> bool:
    r = kb("search", word, "-k", "5", "--json", ws=ws, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"kb search failed: {r.stderr}")
    return any(word in h["text"] for h in json.loads(r.stdout)["hits"])


def until(cond: Any, timeout: float = 30.0) -> float:
    """Seconds until ``cond()`` holds (checked back to back), to the end of the successful check."""
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            return float("inf")
    return time.perf_counter() - t0


def via_socket(ws: Path, word: str) -> bool:
    """Does the watcher return ``word`` (kb.serve.client in this process: no process start)?"""
    from kb.serve.client import connect

    remote = connect(ws)
    if remote is None:
        raise RuntimeError("kb watch is not answering")
    with remote:
        return any(word in h.text for h in remote.search(word, k=5))


def both(ws: Path, cond: Any) -> tuple[float, float]:
    """Seconds from now until ``cond`` holds (1) through the socket, polled every 20 ms in a thread, and
    (2) for ``kb search`` processes run back to back."""
    t0 = time.perf_counter()
    found: dict[str, float] = {}

    def poll() -> None:
        while time.perf_counter() - t0 < 30:
            if cond(lambda w: via_socket(ws, w)):
                found["t"] = time.perf_counter() - t0
                return
            time.sleep(0.02)

    thread = threading.Thread(target=poll)
    thread.start()
    cli = until(lambda: cond(lambda w: returned(ws, w)))
    thread.join()
    return found.get("t", float("inf")), cli


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=7, help="repetitions of the client-wall measurements")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not args.corpus.is_dir():
        print(f"SKIP: corpus {args.corpus} is absent")
        return 0
    offline()
    with scratch("kb-bench-watch-", args.keep, say) as tmp:
        os.environ.setdefault("KB_MODEL_CACHE_DIR", str(tmp / "models"))
        return run(args, tmp)


def run(args: argparse.Namespace, tmp: Path) -> int:
    rng = random.Random(7)
    ws = tmp / "ws"
    (ws / ".workos" / "context").mkdir(parents=True)
    shutil.copytree(args.corpus, ws / ".workos" / "resources")
    files = generate(ws, args.files, rng)
    load_start = os.getloadavg()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "files_generated": args.files,
        "corpus": str(args.corpus),
    }
    watch = None
    try:
        say(f"indexing {ws} (resources corpus + {args.files} generated files)")
        t = time.perf_counter()
        r = kb("index", "--json", ws=ws)
        if r.returncode != 0:
            raise RuntimeError(f"kb index failed: {r.stderr}")
        results["index"] = {
            **{k: v for k, v in json.loads(r.stdout).items() if k != "paths"},
            "wall_s": round(time.perf_counter() - t, 1),
        }
        say(f"indexed: {results['index']['chunks_total']} chunks in {results['index']['wall_s']} s")

        t = time.perf_counter()
        watch = kb_watch(ws, tmp / "watch.log", timeout=600)
        results["watch_start_s"] = round(time.perf_counter() - t, 2)
        say(f"kb watch ready in {results['watch_start_s']} s (pid {watch.pid})")

        say(f"freshness: {args.edits} edits")
        edited: list[tuple[Path, str]] = []
        fresh: list[float] = []
        fresh_socket: list[float] = []
        for path in rng.sample(files, args.edits):
            word = unique_word(rng)
            with open(path, "a") as fh:
                fh.write(f"\nThe rollout owner wrote {word} in the runbook.\n")
            sock_t, cli_t = both(ws, lambda check, w=word: check(w))
            fresh.append(cli_t)
            fresh_socket.append(sock_t)
            edited.append((path, word))
        say(f"freshness p50 {pct(fresh, 0.5):.2f} s, p95 {pct(fresh, 0.95):.2f} s")
        gone: list[float] = []
        gone_socket: list[float] = []
        for path, word in edited:
            path.unlink()
            sock_t, cli_t = both(ws, lambda check, w=word: not check(w))
            gone.append(cli_t)
            gone_socket.append(sock_t)
        say(f"delete p50 {pct(gone, 0.5):.2f} s, p95 {pct(gone, 0.95):.2f} s")

        say("client wall vs import sentence_transformers")
        imported = [sys.executable, "-c", "import sentence_transformers"]
        imp = [wall(imported, lambda r: r.returncode == 0, "import sentence_transformers") for _ in range(3)]
        before = served_count(ws)
        search = kb_command("search", QUERY, "--json", "--workspace", ws)
        search_w = [wall(search, search_ok, "kb search") for _ in range(args.runs)]
        ask = kb_command("ask", QUERY, "--json", "--workspace", ws)
        ask_w = [wall(ask, ask_ok, "kb ask") for _ in range(args.runs)]
        answered = served_count(ws) - before - 1  # the second `kb status` counts itself
        if answered < 2 * args.runs:
            raise RuntimeError(f"the watcher answered {answered} of {2 * args.runs} kb search/ask runs")
        results["client_runs_answered_by_watcher"] = answered
        say(
            f"import st {statistics.median(imp):.2f} s; search {statistics.median(search_w):.3f} s; "
            f"ask {statistics.median(ask_w):.3f} s"
        )
        # The watcher's own answer time (kb.serve.client in this process: no process start, no rendering).
        from kb.serve.client import connect

        served: dict[str, list[float]] = {"search": [], "ask": []}
        for _ in range(args.runs):
            with connect(ws) as remote:  # type: ignore[union-attr]
                t = time.perf_counter()
                remote.search(QUERY, k=10)
                served["search"].append(time.perf_counter() - t)
                t = time.perf_counter()
                remote.ask(QUERY, persona="auto")
                served["ask"].append(time.perf_counter() - t)
        say(
            f"watcher answer time: search {statistics.median(served['search']) * 1000:.0f} ms, "
            f"ask {statistics.median(served['ask']) * 1000:.0f} ms"
        )

        say(f"idle: {args.idle:.0f} s")
        time.sleep(2)
        c0, t0 = cpu_seconds(watch.pid), time.monotonic()
        time.sleep(args.idle)
        c1, t1 = cpu_seconds(watch.pid), time.monotonic()
        idle_pct = 100 * (c1 - c0) / (t1 - t0)
        rss = rss_mb(watch.pid)

        code = watch.stop(signal.SIGTERM, timeout=60)
        results["watch_exit_code"] = code
        results["watch_log_lines"] = sum(
            1 for line in (tmp / "watch.log").read_text().splitlines() if "re-indexed:" in line
        )
        st_import = statistics.median(imp)
        rows = [
            ("freshness, kb search CLI polled, p50 (s)", pct(fresh, 0.5), 1.0),
            ("freshness, kb search CLI polled, p95 (s)", pct(fresh, 0.95), 2.0),
            ("freshness, socket polled, p50 (s)", pct(fresh_socket, 0.5), 1.0),
            ("freshness, socket polled, p95 (s)", pct(fresh_socket, 0.95), 2.0),
            ("delete, kb search CLI polled, p50 (s)", pct(gone, 0.5), 1.0),
            ("delete, kb search CLI polled, p95 (s)", pct(gone, 0.95), 2.0),
            ("delete, socket polled, p50 (s)", pct(gone_socket, 0.5), 1.0),
            ("delete, socket polled, p95 (s)", pct(gone_socket, 0.95), 2.0),
            ("kb search wall / import sentence_transformers", statistics.median(search_w) / st_import, 0.05),
            ("kb ask wall / import sentence_transformers", statistics.median(ask_w) / st_import, 0.05),
            ("idle CPU (% of one core)", idle_pct, 1.0),
        ]
        results.update(
            {
                "freshness_s": fresh,
                "delete_s": gone,
                "freshness_socket_s": fresh_socket,
                "delete_socket_s": gone_socket,
                "import_sentence_transformers_s": imp,
                "kb_search_wall_s": search_w,
                "kb_ask_wall_s": ask_w,
                "watcher_answer_s": served,
                "idle_seconds": args.idle,
                "idle_cpu_percent": idle_pct,
                "rss_mb": rss,
                "load_avg_start": load_start,
                "load_avg_end": os.getloadavg(),
                "rows": [{"metric": m, "measured": v, "bound": b, "passed": v <= b} for m, v, b in rows],
            }
        )
        results["all_passed"] = all(v <= b for _, v, b in rows) and code == 0
        print("| metric | measured | bound | result |\n|---|---|---|---|")
        for m, v, b in rows:
            print(f"| {m} | {v:.3f} | <= {b:g} | {'pass' if v <= b else '**FAIL**'} |")
        print(f"| import sentence_transformers (s, median of 3) | {st_import:.2f} | | |")
        print(
            f"| kb search / kb ask median wall (s) | {statistics.median(search_w):.3f} / "
            f"{statistics.median(ask_w):.3f} | | |"
        )
        print(
            f"| watcher's own answer time, search / ask (ms, median) | "
            f"{statistics.median(served['search']) * 1000:.0f} / "
            f"{statistics.median(served['ask']) * 1000:.0f} | | |"
        )
        print(f"| kb search/ask runs answered by the watcher | {answered} of {2 * args.runs} | | |")
        print(f"| watcher RSS (MB) | {rss:.0f} | | |")
        print(
            f"| index: chunks / wall (s) | {results['index']['chunks_total']} / "
            f"{results['index']['wall_s']} | | |"
        )
        print(f"| load average start / end | {load_start[0]:.2f} / {os.getloadavg()[0]:.2f} | | |")
        print(f"\nRESULT: {'PASS' if results['all_passed'] else 'FAIL'}")
        say(f"wrote {write_results('bench_watch', results, default=str)}")
        return 0
    finally:
        if watch is not None and watch.popen.poll() is None:
            watch.stop(signal.SIGTERM, timeout=60)


if __name__ == "__main__":
    sys.exit(main())
